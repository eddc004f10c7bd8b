"""A failure inside the server (a bug, injected here) is a 500 with OpenAI's error JSON, answered on the
same keep-alive connection, which then serves the next request."""

from __future__ import annotations

import http.client
import json

import pytest

from cogvlm.api import CogVLM
from cogvlm.frontends.server import app as server_app
from cogvlm.frontends.server.config import ServerConfig
from cogvlm.text_processors import LlamaTokenizer
from tests.frontends.server.conftest import free_port, serving_in_thread
from tests.golden import golden_dir
from tests.golden_models import golden_model, tokenizer_file


@pytest.fixture
def failing_server(monkeypatch):
    real_prepare = server_app.prepare_job

    def prepare_or_fail(session, config, chat):
        if chat.query == "boom":
            raise RuntimeError("injected failure")
        return real_prepare(session, config, chat)

    monkeypatch.setattr(server_app, "prepare_job", prepare_or_fail)
    session = CogVLM(
        golden_model(golden_dir() / "cogvlm"), LlamaTokenizer.from_file(tokenizer_file()), "chat_old"
    )
    port = free_port()
    with serving_in_thread(server_app.create_app(session, ServerConfig(port=port)), port):
        yield port


def _post(conn: http.client.HTTPConnection, query: str) -> tuple[int, dict]:
    body = {"messages": [{"role": "user", "content": query}], "max_tokens": 2}
    headers = {"Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_an_internal_error_is_a_500_and_the_connection_stays_usable(failing_server):
    conn = http.client.HTTPConnection("127.0.0.1", failing_server, timeout=60)
    conn.connect()
    sock = conn.sock
    for _ in range(3):
        status, payload = _post(conn, "boom")
        assert status == 500
        assert payload["error"]["type"] == "server_error"
        assert "RuntimeError: injected failure" in payload["error"]["message"]
        status, payload = _post(conn, "hi")
        assert status == 200, payload
    assert conn.sock is sock
    conn.close()
