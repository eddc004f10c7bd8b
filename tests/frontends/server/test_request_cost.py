"""Request cost in process, by counts: merging messages is linear, one image is decoded, an overlong
prompt is refused without tokenizing, and the queue admits exactly `max_active + max_queue` jobs."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading

import pytest
from PIL import Image

from cogvlm.api import CogVLM
from cogvlm.frontends.server import images
from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.errors import APIError
from cogvlm.frontends.server.generation import prepare_job
from cogvlm.frontends.server.requests import ChatRequest, parse_chat_request
from cogvlm.frontends.server.scheduler import Scheduler
from cogvlm.text_processors import LlamaTokenizer
from tests.golden import golden_dir
from tests.golden_models import golden_model, tokenizer_file

MODEL_DIR = golden_dir() / "cogvlm"


def _in_thread(function, timeout_s: float):
    """`function()`'s result, or a failure when it has not returned within `timeout_s`."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", function()), daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert "value" in result, f"did not finish within {timeout_s} s"
    return result["value"]


def test_merging_320k_messages_of_one_role_is_linear():
    # Joining as it went copied the growing text once per message: 320k messages of 8 characters took
    # 18 s; of 200 characters, ~1e13 bytes to copy, far past the timeout. Joining once takes a second.
    count = 320_000
    messages = [{"role": "user", "content": f"{index:07d}" + "x" * 193} for index in range(count)]
    config = ServerConfig(max_messages=count)
    chat = _in_thread(lambda: parse_chat_request({"messages": messages}, config), timeout_s=60)
    assert chat.history == ()
    assert chat.query == "\n".join(message["content"] for message in messages)


def _data_url(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_only_the_last_image_url_is_decoded(monkeypatch):
    decoded = []
    real_load = images.load_image

    def counting_load(data, **options):
        decoded.append(len(data))
        return real_load(data, **options)

    monkeypatch.setattr(images, "load_image", counting_load)
    first, last = _data_url((8, 8)), _data_url((24, 16))
    parts = [{"type": "image_url", "image_url": {"url": first}}] * 30
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, *parts]},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [*parts, {"type": "image_url", "image_url": {"url": last}}]},
    ]
    chat = parse_chat_request({"messages": messages}, ServerConfig())
    assert len(decoded) == 1
    assert chat.image.size == (24, 16)


def test_a_local_file_is_read_only_up_to_the_image_limit():
    config = ServerConfig(allow_file_images=True, max_image_bytes=1000)
    # /proc files report a size of 0 whatever they hold: the size check alone would read them whole.
    with pytest.raises(APIError, match="larger than 1000 bytes") as raised:
        images.image_from_url("file:///proc/self/maps", "url", config)
    assert raised.value.status == 413


def test_an_unreadable_local_file_is_a_400(tmp_path):
    config = ServerConfig(allow_file_images=True)
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"x")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything
        pytest.skip("running as root: no unreadable file to try")
    with pytest.raises(APIError, match="could not read") as raised:
        images.image_from_url(locked.as_uri(), "url", config)
    assert raised.value.status == 400


class CountingTokenizer(LlamaTokenizer):
    """The golden tokenizer, counting the characters it was asked to encode and to measure."""

    encoded_chars = 0
    measured_chars = 0

    def encode(self, text: str) -> list[int]:
        self.encoded_chars += len(text)
        return super().encode(text)

    def min_token_count(self, text: str) -> int:
        self.measured_chars += len(text)
        return super().min_token_count(text)


@pytest.fixture(scope="module")
def session() -> CogVLM:
    tokenizer = CountingTokenizer.from_file(tokenizer_file())
    return CogVLM(golden_model(MODEL_DIR), tokenizer, "chat_old")


def test_a_20_mb_prompt_is_refused_before_it_is_tokenized(session):
    session.tokenizer.encoded_chars = session.tokenizer.measured_chars = 0
    chat = ChatRequest(model="m", query="word " * (4 << 20), history=(("hi", "hello"),), image=None)
    with pytest.raises(APIError, match="the prompt exceeds the context length limit") as raised:
        prepare_job(session, ServerConfig(), chat)
    assert raised.value.status == 400 and raised.value.code == "context_length_exceeded"
    assert session.tokenizer.encoded_chars == 0
    # Only a prefix of twice the context's worth of characters was measured, not the 20 MB.
    context_chars = session.config.llm.max_sequence_length * session.tokenizer.max_piece_chars
    assert 0 < session.tokenizer.measured_chars <= 2 * context_chars + len("hi") + len("hello")


def test_a_prompt_near_the_limit_is_still_tokenized_and_measured_exactly(session):
    # Short enough that the bound cannot decide: the real token count does, naming it.
    chat = ChatRequest(model="m", query="word " * 1100, history=(), image=None)
    with pytest.raises(APIError, match=r"the prompt has \d+ tokens"):
        prepare_job(session, ServerConfig(), chat)
    assert session.tokenizer.encoded_chars > 0


def _scheduler(max_active: int, max_queue: int) -> Scheduler:
    return Scheduler(
        golden_model(MODEL_DIR),
        LlamaTokenizer.from_file(tokenizer_file()),
        max_active=max_active,
        max_queue=max_queue,
        timeout_s=60,
    )


def test_a_burst_fills_the_free_rows_and_the_queue_before_any_429(session):
    prepared = prepare_job(session, ServerConfig(), ChatRequest("m", "hi", (), None, max_tokens=4))
    scheduler = _scheduler(max_active=3, max_queue=2)

    async def burst():
        # All submitted before the worker admits any: the rows are free, only the queue's 2 wait.
        jobs = [scheduler.submit(prepared) for _ in range(5)]
        with pytest.raises(APIError) as refused:
            scheduler.submit(prepared)
        assert refused.value.status == 429 and refused.value.code == "queue_full"
        jobs[0].cancel()  # a client that left frees its place
        jobs.append(scheduler.submit(prepared))
        with pytest.raises(APIError):
            scheduler.submit(prepared)
        return jobs

    assert len(asyncio.run(burst())) == 6
