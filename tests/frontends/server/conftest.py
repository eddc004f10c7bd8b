"""A real `cogvlm serve` process on 127.0.0.1 with the golden tiny model, shared by the server tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
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
