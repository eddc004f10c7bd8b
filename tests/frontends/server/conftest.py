"""A real `cogvlm serve` process on 127.0.0.1 with the golden tiny model, shared by the server tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.frontends.server.helpers import SERVED_VERSION
from tests.golden import golden_dir

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving_in_thread(app, port: int) -> Iterator[None]:
    """`app` served by uvicorn on 127.0.0.1:`port` from a thread of this process, until the block ends."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class RunningServer:
    """A server subprocess and its base URL."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        )
        command = [
            sys.executable,
            "-m",
            "cogvlm.cli",
            "serve",
            "--port",
            str(self.port),
            "--from_pretrained",
            str(golden_dir() / "cogvlm" / "sat_checkpoint"),
            "--local_tokenizer",
            str(golden_dir() / "tokenizer.model"),
            "--version",
            SERVED_VERSION,
            "--model-id",
            "tiny-cogvlm",
            *extra,
        ]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._wait_until_healthy()

    def _wait_until_healthy(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become healthy")

    def is_alive(self) -> bool:
        """True while the process runs and answers /health."""
        return self.process.poll() is None and httpx.get(self.url + "/health", timeout=5).status_code == 200

    def stop(self) -> None:
        """Terminate the process."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="session")
def server():
    """The default server: no API key, default limits."""
    running = RunningServer()
    yield running
    running.stop()
