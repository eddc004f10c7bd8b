"""Hostile requests over real HTTP: bodies over the limit stop early, odd JSON is a 4xx that leaves the
keep-alive connection usable, cheap requests stay cheap, and a burst is queued exactly as `--max-queue`
says."""

from __future__ import annotations

import http.client
import http.server
import json
import select
import socket
import threading
import time

import httpx
import pytest

from tests.frontends.server.conftest import RunningServer
from tests.frontends.server.helpers import IMAGE_BYTES, IMAGE_URL

LIMIT = 32 << 20  # ServerConfig.max_request_bytes
# What the kernel's socket buffers may hold on both sides before the server's answer can arrive.
SLACK = 16 << 20
HI = [{"role": "user", "content": "hi"}]
GOOD = json.dumps({"messages": HI, "max_tokens": 2, "temperature": 0}).encode()


def _body(**fields) -> bytes:
    return json.dumps({"messages": HI, "max_tokens": 2, **fields}).encode()


def _with(fragment: str) -> bytes:
    """A body whose JSON text carries `fragment` verbatim (for what `json.dumps` would not write)."""
    return ('{"messages": [{"role": "user", "content": "hi"}], ' + fragment + "}").encode()


def _user_text(text: str) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": 2}).encode()


BAD = {
    "nested 100,000 deep": (_with('"x": ' + "[" * 100_000 + "]" * 100_000), "at most 100000 are accepted"),
    "nested 50,000 deep": (_with('"x": ' + "[" * 50_000 + "]" * 50_000), "deeper than 32 levels"),
    "nested 40 deep": (_with('"x": ' + "[" * 40 + "]" * 40), "deeper than 32 levels"),
    "5,000-digit max_tokens": (_with('"max_tokens": ' + "9" * 5000), "integer of 5000 digits"),
    "max_tokens over 2**31": (_body(max_tokens=2**40), "max_tokens must be <="),
    "NaN top_p": (_with('"top_p": NaN'), "NaN is not a JSON number"),
    "NaN repetition_penalty": (_with('"repetition_penalty": NaN'), "NaN is not a JSON number"),
    "NaN temperature": (_with('"temperature": NaN'), "NaN is not a JSON number"),
    "Infinity temperature": (_with('"temperature": -Infinity'), "Infinity is not a JSON number"),
    "1e999 temperature": (_with('"temperature": 1e999'), "temperature must be a finite number"),
    "temperature 1e-300": (_body(temperature=1e-300), "temperature must be 0 (greedy) or in [1e-05, 2.0]"),
    "repetition_penalty 1e-300": (_body(repetition_penalty=1e-300), "repetition_penalty must be in [0.01"),
    "seed 2**64": (_body(seed=2**64), "seed must be <= 18446744073709551615"),
    "seed below -2**63": (_body(seed=-(2**63) - 1), "seed must be >="),
    "surrogate in content": (_user_text("hi \ud800"), "lone UTF-16 surrogate (U+D800"),
    "surrogate in model": (_body(model="m\udc00"), "model: the string holds a lone UTF-16 surrogate"),
    "surrogate in stop": (_body(stop=["\udfff"]), "lone UTF-16 surrogate"),
    "surrogate in a key": (_with('"\\ud800": 1'), "a key holds a lone UTF-16 surrogate"),
    "surrogate in a role": (
        json.dumps({"messages": [{"role": "user\ud800", "content": "hi"}]}).encode(),
        "lone UTF-16 surrogate",
    ),
    "UTF-8-encoded surrogate": (
        b'{"messages": [{"role": "user", "content": "hi \xed\xa0\x80"}]}',
        "lone UTF-16 surrogate",
    ),
    "stream_options a list": (_body(stream_options=[]), "stream_options must be an object"),
    "include_usage a string": (_body(stream_options={"include_usage": "no"}), "must be a boolean"),
    "image marker in text": (_user_text("look <EOI> here"), "reserved for the image"),
    "model name of 10,000 characters": (_body(model="m" * 10_000), "model may have at most 256"),
    "stop string of 10,000 characters": (_body(stop="s" * 10_000), "at most 256 characters"),
    "320,000 messages": (
        json.dumps({"messages": [{"role": "user", "content": "a"}] * 320_000}).encode(),
        "has 320002 '{' and '[' characters",
    ),
    "3,000 messages": (
        json.dumps({"messages": [{"role": "user", "content": "a"}] * 3000}).encode(),
        "accepts at most 2048",
    ),
    "10 million empty objects": (_with('"x": [' + "{}," * 10_000_000 + "{}]"), "at most 100000 are accepted"),
}


def _post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, dict]:
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_bad_bodies_are_4xx_and_the_keep_alive_connection_stays_usable(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.connect()
    sock = conn.sock
    for name, (body, message) in BAD.items():
        status, payload = _post(conn, body)
        assert status == 400, (name, payload)
        assert message in payload["error"]["message"], (name, payload)
        status, payload = _post(conn, GOOD)  # the same connection answers the next request
        assert status == 200, (name, payload)
        assert payload["choices"][0]["message"]["content"]
    conn.request("POST", "/v1/nothing", body=GOOD)  # a 404 before the body is read: it is drained
    missing = conn.getresponse()
    assert missing.status == 404 and "error" in json.loads(missing.read())
    assert _post(conn, GOOD)[0] == 200
    assert conn.sock is sock  # never reconnected: no request above closed the connection
    conn.close()


UPPER_URL = "DATA:IMAGE/PNG;BASE64," + IMAGE_URL.split(",", 1)[1]
EDGES = {
    "smallest temperature": {"temperature": 1e-5},
    "smallest repetition_penalty": {"temperature": 1.0, "repetition_penalty": 0.01},
    "largest repetition_penalty": {"temperature": 2.0, "repetition_penalty": 10.0},
    "smallest top_p": {"temperature": 1.0, "top_p": 5e-324},
    "largest seed": {"temperature": 1.0, "seed": 2**64 - 1},
    "smallest seed": {"temperature": 1.0, "seed": -(2**63)},
    "upper-case data URL": {
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": UPPER_URL}}]}]
    },
    "4 stop strings of 256 characters": {"stop": ["a" * 256, "b" * 256, "c" * 256, "d" * 256]},
}


@pytest.mark.parametrize("name", sorted(EDGES))
def test_settings_at_the_edges_of_their_ranges_generate(server, name):
    body = {"messages": HI, "max_tokens": 8, **EDGES[name]}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1


def _send_chunked_until_answered(port: int, total: int) -> tuple[int, bytes]:
    """Stream a chunked body of `total` bytes; stop when the server answers. (bytes sent, answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * (64 << 10)
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent, deadline = 0, time.monotonic() + 120
    with sock:
        while sent < total and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1)
            if readable:
                break
            if writable:
                try:
                    sock.sendall(chunk)
                except OSError:  # the server answered and closed while we wrote
                    break
                sent += len(piece)
        return sent, sock.recv(1 << 16)


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_a_200_mb_chunked_body_is_refused_as_soon_as_it_passes_the_limit(server):
    rss_before = _rss_bytes(server.process.pid)
    sent, answer = _send_chunked_until_answered(server.port, 200 << 20)
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 413"), answer[:300]
    assert b"connection: close" in head
    assert sent < LIMIT + SLACK  # answered while the upload was still going, not after 200 MB
    # Buffering the whole upload cost +360 MB; reading chunk by chunk holds at most the limit (twice
    # while the buffer grows, plus the allocator's slack).
    assert _rss_bytes(server.process.pid) - rss_before < 3 * LIMIT
    assert server.is_alive()


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (LIMIT + 1)
        )
        answer = sock.recv(1 << 16)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]


def test_a_20_mb_prompt_is_refused_for_its_length(server):
    body = json.dumps({"messages": [{"role": "user", "content": "word " * (4 << 20)}]})
    response = httpx.post(
        server.url + "/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"
    # Refused by the lower bound on its token count: tokenizing it in full took 15 s.
    assert "text alone needs at least" in response.json()["error"]["message"]


def _image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_only_the_last_image_is_decoded(server):
    broken = "data:image/png;base64,aGVsbG8gd29ybGQ="  # "hello world": not an image
    content = [{"type": "text", "text": "What is it?"}, *[_image_part(broken)] * 20, _image_part(IMAGE_URL)]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2, "temperature": 0}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    # A disabled scheme is refused wherever it appears, although it would never be fetched.
    content[1] = _image_part("file:///etc/passwd")
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400
    assert "file:// image URLs are disabled" in response.json()["error"]["message"]


SMALL_LIMIT = 1 << 20
BODY_TIMEOUT_S = 3
REMOTE_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def queued_server():
    running = RunningServer(
        *("--max-active", "2", "--max-queue", "2", "--body-timeout", str(BODY_TIMEOUT_S)),
        *("--max-request-bytes", str(SMALL_LIMIT), "--max-buffered-bytes", str(2 * SMALL_LIMIT)),
        *("--allow-remote-images", "--remote-image-timeout", str(REMOTE_TIMEOUT_S)),
    )
    yield running
    running.stop()


def _start_upload(port: int, size: int) -> socket.socket:
    """A connection that sent `size` bytes of a chunked body and then stalls."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % size
        + b"x" * size
        + b"\r\n"
    )
    return sock


def test_stalled_uploads_are_bounded_in_time_and_in_memory_together(queued_server):
    # Any two uploads of 0.9 MiB fit the 2 MiB the server buffers at once; whichever comes third does not.
    uploads = [_start_upload(queued_server.port, 900 << 10) for _ in range(3)]
    started = time.monotonic()
    answers = []
    for sock in uploads:
        with sock:
            answers.append(sock.recv(1 << 16).split(b"\r\n")[0])
    assert sorted(answers) == [b"HTTP/1.1 408 Request Timeout"] * 2 + [b"HTTP/1.1 503 Service Unavailable"]
    assert time.monotonic() - started < BODY_TIMEOUT_S + 30
    response = httpx.post(queued_server.url + "/v1/chat/completions", json={"messages": HI, "max_tokens": 1})
    assert response.status_code == 200  # the budget was given back


def test_a_burst_gets_exactly_the_429s_the_queue_implies(queued_server):
    # 1,000 greedy tokens take seconds even alone, so the whole burst arrives before any request ends.
    body = {"messages": HI, "max_tokens": 1000, "temperature": 0}
    burst = 7
    barrier = threading.Barrier(burst)
    statuses, lock = [], threading.Lock()

    def call():
        barrier.wait()
        response = httpx.post(queued_server.url + "/v1/chat/completions", json=body, timeout=300)
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=call) for _ in range(burst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    # 2 rows decode and 2 requests wait: the other 3 are refused.
    assert sorted(statuses) == [200] * 4 + [429] * 3
    assert queued_server.is_alive()


class _ImageHost(http.server.BaseHTTPRequestHandler):
    """Serves the golden image, a slow drip, and redirects the server must not follow."""

    redirects = {"/to-file": "file:///etc/passwd", "/to-ftp": "ftp://127.0.0.1/x.png", "/loop": "/loop"}

    def do_GET(self):  # noqa: N802 - the http.server hook's name
        if self.path in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path])
            self.end_headers()
        elif self.path == "/slow":  # a byte at a time, each well within the per-read timeout
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE_BYTES)))
            self.end_headers()
            self.wfile.write(IMAGE_BYTES)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    host.daemon_threads = True
    threading.Thread(target=host.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{host.server_address[1]}"
    host.shutdown()


def _fetch(server: RunningServer, url: str) -> httpx.Response:
    content = [{"type": "text", "text": "What is it?"}, _image_part(url)]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 1}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)


def test_remote_images_are_fetched_within_the_timeout_and_only_over_http(queued_server, image_host):
    assert _fetch(queued_server, image_host + "/image.png").status_code == 200
    started = time.monotonic()
    slow = _fetch(queued_server, image_host + "/slow")
    assert slow.status_code == 400 and "longer than" in slow.json()["error"]["message"]
    assert time.monotonic() - started < 2 * REMOTE_TIMEOUT_S + 10  # not the 20 s the drip would take
    reasons = {"/to-file": "not allowed", "/to-ftp": "redirect to a ftp: URL refused", "/loop": "loop"}
    for path, reason in reasons.items():
        refused = _fetch(queued_server, image_host + path)
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json()["error"]["code"] == "image_fetch_failed"
        assert reason in refused.json()["error"]["message"], (path, refused.text)
