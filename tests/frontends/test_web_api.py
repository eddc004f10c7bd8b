"""The web demo through Gradio's HTTP API, as any client can call it: inputs its page never sends get an
error message in the chat, a multi-turn chat in Gradio's message format works, and the demo stays up."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.frontends.web_demo import web_demo_process

MAX_LENGTH = 200
MAX_QUEUE = 2


@pytest.fixture(scope="module")
def web_url():
    pytest.importorskip("gradio")
    extra = ("--max_length", str(MAX_LENGTH), "--max-queue", str(MAX_QUEUE))
    with web_demo_process(extra, start_timeout_s=180) as url:
        yield url


def _respond(url: str, data_json: str) -> list:
    """The final outputs of the demo's `respond` handler for a raw JSON `data` array."""
    started = httpx.post(
        url + "/gradio_api/call/respond",
        content=('{"data": ' + data_json + "}").encode(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    with httpx.stream("GET", f"{url}/gradio_api/call/respond/{event_id}", timeout=120) as events:
        lines = list(events.iter_lines())
    kinds = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert kinds[-1] == "complete", lines[-4:]
    return json.loads(lines[lines.index("event: complete") + 1].removeprefix("data: "))


def _reply(outputs: list) -> str:
    return "".join(part["text"] for part in outputs[0][-1]["content"])


def _parts(text: str) -> list[dict]:
    return [{"type": "text", "text": text}]


BAD = {
    "lone surrogate": ('"hi \\ud800"', "[]", "0.5, 0.4, 10", "lone UTF-16 surrogate (U+D800"),
    "image marker": ('"look <EOI> here"', "[]", "0.5, 0.4, 10", "reserved for the image"),
    "NaN temperature": ('"hi"', "[]", "NaN, 0.4, 10", "temperature must be a finite number"),
    "NaN top_k": ('"hi"', "[]", "0.5, 0.4, NaN", "top_k must be a finite number"),
    "forged marker in the history": (
        '"hi"',
        json.dumps(
            [{"role": "user", "content": _parts("<EOI>")}, {"role": "assistant", "content": _parts("a")}]
        ),
        "0.5, 0.4, 10",
        "question 1 of the chat",
    ),
    "20 MB question": (json.dumps("word " * (4 << 20)), "[]", "0.5, 0.4, 10", "at most 100000 are accepted"),
    "question too long for the context": (json.dumps("word " * 5000), "[]", "0.5, 0.4, 10", "needs at least"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_inputs_get_an_error_in_the_chat(web_url, name):
    text, history, sliders, message = BAD[name]
    outputs = _respond(web_url, f'[null, {text}, {history}, "Chat", {sliders}]')
    assert _reply(outputs).startswith("Error: "), _reply(outputs)[:300]
    assert message in _reply(outputs)


def test_a_missing_question_changes_nothing(web_url):
    outputs = _respond(web_url, '[null, null, [], "Chat", 0.5, 0.4, 10]')
    assert outputs[0] == []


def test_a_second_turn_in_gradio_message_format_is_answered(web_url):
    history = [{"role": "user", "content": _parts("hi")}, {"role": "assistant", "content": _parts("hello")}]
    outputs = _respond(web_url, f'[null, "and now?", {json.dumps(history)}, "Chat", 0.5, 0.4, 10]')
    messages = outputs[0]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert not _reply(outputs).startswith("Error"), _reply(outputs)[:300]


def test_an_upload_over_the_limit_is_refused(web_url):
    # Gradio accepts uploads of any size unless told otherwise; the demo allows 20 MiB.
    files = {"files": ("big.png", b"\0" * (21 << 20), "image/png")}
    response = httpx.post(web_url + "/gradio_api/upload", files=files, timeout=120)
    assert response.status_code == 413, response.text[:300]
    small = {"files": ("small.png", b"\0" * 1024, "image/png")}
    assert httpx.post(web_url + "/gradio_api/upload", files=small, timeout=60).status_code == 200


def test_requests_beyond_the_queue_are_refused(web_url):
    # One request runs and MAX_QUEUE wait; a burst of 8 fills both long before the first one ends.
    body = b'{"data": [null, "hi", [], "Chat", 0.5, 0.4, 10]}'
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=web_url, timeout=60) as client:
        answers = [client.post("/gradio_api/call/respond", content=body, headers=headers) for _ in range(8)]
        refused = [answer for answer in answers if answer.status_code == 503]
        accepted = [answer.json()["event_id"] for answer in answers if answer.status_code == 200]
        assert len(refused) + len(accepted) == len(answers)
        assert refused and len(accepted) >= 1 + MAX_QUEUE
        assert all(f"Queue is full. Max size is {MAX_QUEUE}" in answer.text for answer in refused)
        for event_id in accepted:  # the accepted ones are answered
            with client.stream("GET", f"/gradio_api/call/respond/{event_id}", timeout=120) as events:
                assert "event: complete" in list(events.iter_lines())
