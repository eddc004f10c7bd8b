"""/health tells a lost tensor-parallel batch apart from a serving one (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import http.client
import json

from cogvlm.api import CogVLM
from cogvlm.errors import TensorParallelFailure
from cogvlm.frontends.server import app as server_app
from cogvlm.frontends.server.config import ServerConfig
from cogvlm.inference.decode_batch import DecodeBatch
from cogvlm.text_processors import LlamaTokenizer
from tests.frontends.server.conftest import free_port, serving_in_thread
from tests.golden import golden_dir
from tests.golden_models import golden_model, tokenizer_file

LOST = "tensor-parallel serving failed: rank 1 stopped answering"


class WatchedBatch(DecodeBatch):
    """A decode batch whose watch of the other ranks (a `LeaderBatch`'s) can report a loss."""

    failure: TensorParallelFailure | None = None


def _get(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload


def test_health_and_new_requests_report_the_lost_batch_before_the_server_stops():
    session = CogVLM(
        golden_model(golden_dir() / "cogvlm"), LlamaTokenizer.from_file(tokenizer_file()), "chat_old"
    )
    batch = WatchedBatch(session.model, max_rows=2)
    port = free_port()
    with serving_in_thread(server_app.create_app(session, ServerConfig(port=port), batch=batch), port):
        status, payload = _get(port, "GET", "/health")
        assert status == 200 and payload["status"] == "ok"
        batch.failure = TensorParallelFailure(LOST)  # what the watch sets while the server idles
        status, payload = _get(port, "GET", "/health")
        assert status == 503 and payload["error"]["code"] == "tensor_parallel_failure"
        assert payload["error"]["message"] == LOST
        request = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        status, payload = _get(port, "POST", "/v1/chat/completions", request)
        assert status == 503 and payload["error"]["message"] == LOST
