"""`cogvlm web --nproc 2`: two torchrun/gloo ranks behind the Gradio demo answer as the reference (MP=1)
does, through the demo's HTTP API, with two questions decoded in one continuous batch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.frontends.server.conftest import REPO, free_port
from tests.golden import find_case, generations, golden_dir, prompts

STARTUP_LIMIT_S = 180


def _case() -> tuple[dict, dict]:
    model_dir = golden_dir() / "cogvlm"
    name = find_case(
        model_dir,
        "of version chat_old without a history",
        lambda p, g: p["version"] == "chat_old" and not p["history"],
    )
    return prompts(model_dir)[name], generations(model_dir)[name]


@pytest.fixture(scope="module")
def tp_web():
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False")
    env.pop("LOCAL_RANK", None)
    command = [sys.executable, "-m", "cogvlm.cli", "web", "--nproc", "2", "--port", str(port)]
    command += ["--from_pretrained", str(golden_dir() / "cogvlm" / "sat_checkpoint")]
    command += ["--local_tokenizer", str(golden_dir() / "tokenizer.model"), "--version", "chat_old"]
    prompt, expected = _case()
    command += ["--max_length", str(len(prompt["input_ids"]) + expected["max_new_tokens"])]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_LIMIT_S
    try:
        while True:
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the web demo did not start in time"
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _reply(url: str, image: str, query: str, history: list[dict]) -> str:
    """The demo's final answer (greedy: top-k 1) to `query` about `image` after `history`."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    inputs = (handle_file(image), query, history, "Chat", 0.0, 0.4, 1)  # temperature 0, top-p, top-k 1
    messages, *_ = client.predict(*inputs, api_name="/respond")
    content = messages[-1]["content"]
    return "".join(part["text"] for part in content) if isinstance(content, list) else content


def test_two_ranks_answer_in_the_web_demo_as_the_reference(tp_web):
    prompt, expected = _case()
    image = str(golden_dir() / "test_image.png")
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: _reply(tp_web, image, prompt["query"], []), range(2)))
    answer = expected["response_after_official_postprocess"]
    assert [reply.strip() for reply in replies] == [answer, answer]
