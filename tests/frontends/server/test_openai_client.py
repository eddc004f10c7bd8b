"""The server answers the official `openai` client exactly as the reference model would."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.frontends.server.helpers import (
    finish_reason,
    first_and_last_served,
    golden_case,
    messages_for,
    served_case,
    served_cases,
)
from tests.golden import stop_string_in


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("case", served_cases())
def test_greedy_answer_and_usage_equal_the_reference(client, case):
    prompt, expected = golden_case(case)
    completion = client.chat.completions.create(
        model="tiny-cogvlm",
        messages=messages_for(prompt),
        temperature=0,
        max_tokens=expected["max_new_tokens"],
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected["response_after_official_postprocess"]
    assert choice.finish_reason == finish_reason(expected, expected["max_new_tokens"])
    new_tokens = len(expected["new_token_ids"])
    assert completion.usage.prompt_tokens == len(prompt["input_ids"])
    assert completion.usage.completion_tokens == new_tokens
    assert completion.usage.total_tokens == len(prompt["input_ids"]) + new_tokens
    assert completion.model == "tiny-cogvlm"


def test_streaming_pieces_join_to_the_non_streaming_answer(client):
    prompt, expected = golden_case(first_and_last_served()[-1])
    stream = client.chat.completions.create(
        model="tiny-cogvlm",
        messages=messages_for(prompt),
        temperature=0,
        max_tokens=expected["max_new_tokens"],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected["response_after_official_postprocess"]
    finishes = [
        chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason
    ]
    assert finishes == [finish_reason(expected, expected["max_new_tokens"])]
    assert chunks[-1].usage.completion_tokens == len(expected["new_token_ids"])


def test_sse_framing_has_a_role_chunk_content_a_finish_chunk_and_done(server):
    prompt, expected = golden_case(served_case())
    body = {"model": "m", "messages": messages_for(prompt), "temperature": 0, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: ") for event in events[:-1])
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == finish_reason(expected, 5)
    assert payloads[-1]["choices"][0]["delta"] == {}
    assert len({p["id"] for p in payloads}) == 1


def test_a_stop_string_ends_the_answer_before_it(client):
    prompt, expected = golden_case(served_case())
    full = expected["response_after_official_postprocess"]
    stop = stop_string_in(full)
    completion = client.chat.completions.create(
        model="m",
        messages=messages_for(prompt),
        temperature=0,
        max_tokens=expected["max_new_tokens"],
        stop=[stop],
    )
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == full[: full.index(stop)]


def test_text_only_request_and_system_message(client):
    completion = client.chat.completions.create(
        model="m",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        temperature=0,
        max_tokens=4,
    )
    assert completion.usage.completion_tokens <= 4
    assert completion.usage.prompt_tokens > 3


def test_seeded_sampling_is_reproducible(client):
    prompt, _ = golden_case(served_case())
    answers = {
        client.chat.completions.create(
            model="m", messages=messages_for(prompt), temperature=1.0, top_p=0.9, max_tokens=8, seed=1234
        )
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(answers) == 1


def test_models_and_health(client, server):
    assert [model.id for model in client.models.list().data] == ["tiny-cogvlm"]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok"
