"""Concurrency: many clients at once, clients that leave mid-stream, a bounded queue, deadlines, API keys."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.frontends.server.conftest import RunningServer
from tests.frontends.server.helpers import first_and_last_served, golden_case, messages_for

CLIENTS = 32


def _stream_body(prompt, max_tokens):
    return {
        "model": "m",
        "messages": messages_for(prompt),
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
    }


def _stream_text(url, body, leave_after_chunks=None):
    """The streamed content, or None for a client that leaves after `leave_after_chunks` events."""
    text, events = [], 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events += 1
            if leave_after_chunks is not None and events >= leave_after_chunks:
                return None  # closing the stream drops the connection
            if line == "data: [DONE]":
                break
            payload = json.loads(line.removeprefix("data: "))
            assert "error" not in payload, payload
            choices = payload["choices"]
            if choices:
                text.append(choices[0]["delta"].get("content") or "")
    return "".join(text)


def test_32_concurrent_clients_with_some_leaving_mid_stream(server):
    # Two golden prompts of different lengths alternate, so rows of one batch hold different prompts.
    cases = [golden_case(name) for name in first_and_last_served()]
    leaving = set(range(0, CLIENTS, 4))
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = []
        for index in range(CLIENTS):
            prompt, expected = cases[index % 2]
            body = _stream_body(prompt, expected["max_new_tokens"])
            futures.append(pool.submit(_stream_text, server.url, body, 3 if index in leaving else None))
        results = [future.result(timeout=600) for future in futures]
    for index, text in enumerate(results):
        if index not in leaving:
            assert text == cases[index % 2][1]["response_after_official_postprocess"], index
    deadline = time.monotonic() + 30
    while httpx.get(server.url + "/health").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.2)
    health = httpx.get(server.url + "/health").json()
    assert health["active"] == 0 and health["waiting"] == 0
    if max(len(expected["new_token_ids"]) for _, expected in cases) > 1:  # else nothing is left to decode
        assert health["largest_step"] > 1  # requests were decoded together, not one after another
    assert server.is_alive()


@pytest.fixture(scope="module")
def small_server():
    running = RunningServer("--max-active", "1", "--max-queue", "1", "--timeout", "2", "--api-key", "sesame")
    yield running
    running.stop()


AUTH = {"Authorization": "Bearer sesame"}


def test_requests_without_the_api_key_are_refused(small_server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    missing = httpx.post(small_server.url + "/v1/chat/completions", json=body)
    wrong = httpx.post(
        small_server.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer x"}
    )
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(small_server.url + "/v1/models").status_code == 401
    assert httpx.get(small_server.url + "/health").status_code == 200
    ok = httpx.post(small_server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert ok.status_code == 200


def test_a_full_queue_answers_429_and_recovers(small_server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 300, "temperature": 0}
    statuses = []
    lock = threading.Lock()

    def call():
        response = httpx.post(small_server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)
        with lock:
            statuses.append((response.status_code, response.json()))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(status for status, _ in statuses)
    assert 429 in codes
    rejected = next(payload for status, payload in statuses if status == 429)
    assert rejected["error"]["code"] == "queue_full"
    assert small_server.is_alive()


@pytest.fixture(scope="module")
def impatient_server():
    # 900 decoding steps take far longer than 0.2 s on any machine (each step is a Python-level forward
    # pass), whereas the 2 s of `small_server` were enough for the tiny model on a quiet fast machine.
    running = RunningServer("--timeout", "0.2")
    yield running
    running.stop()


def test_a_request_over_its_deadline_gets_a_504(impatient_server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 900, "temperature": 0}
    started = time.monotonic()
    response = httpx.post(impatient_server.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "timeout"
    assert time.monotonic() - started < 10
