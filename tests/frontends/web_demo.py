"""A real `cogvlm web` process on 127.0.0.1 with the golden tiny model, for the web demo's tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import httpx
import pytest

from tests.frontends.server.conftest import REPO, free_port
from tests.golden import golden_dir


@contextlib.contextmanager
def web_demo_process(extra_args: Sequence[str], start_timeout_s: float) -> Iterator[str]:
    """`cogvlm web` on the golden CogVLM (chat_old) plus `extra_args`; yields its base URL once its page
    answers, and stops it afterwards. The test fails if it does not start within `start_timeout_s`."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "cogvlm.cli", "web", "--port", str(port)),
            *("--from_pretrained", str(golden_dir() / "cogvlm" / "sat_checkpoint")),
            *("--local_tokenizer", str(golden_dir() / "tokenizer.model"), "--version", "chat_old"),
            *extra_args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()[-3000:]
        try:
            if httpx.get(url + "/", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("the web demo did not start")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
