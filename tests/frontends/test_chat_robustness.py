"""`cogvlm chat` against what people type and servers send: bad bytes, Ctrl-C, huge images, `--image` alone.

Real processes in a pseudo-terminal (pexpect) and a real HTTP server on 127.0.0.1, each bounded in time.
"""

from __future__ import annotations

import http.server
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from PIL import Image

from cogvlm.errors import ImageError
from cogvlm.frontends.chat import NOT_UTF8_MESSAGE, STOPPED_MESSAGE, read_image
from cogvlm.frontends.grounding_output import GroundingOutput
from cogvlm.image_processors.drawing import draw_response
from tests.frontends.test_chat import FLAGS, IMAGE, TIMEOUT_S, _ask, _first_turn, _reply, _spawn

IMAGE_PROMPT = "Please enter the image path or URL"
CAP_BYTES = 1 << 20


def _ends_cleanly(child: pexpect.spawn) -> None:
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "Traceback" not in child.before


def test_undecodable_bytes_in_a_query_get_a_message_and_the_session_goes_on():
    query, reply = _first_turn()
    child = _spawn()
    _ask(child, IMAGE_PROMPT, str(IMAGE))
    child.expect_exact("User: ")
    os.write(child.child_fd, b"caf\xe9 \xff\xfe?\n")  # Latin-1 bytes, not UTF-8
    child.expect_exact(NOT_UTF8_MESSAGE)
    _ask(child, "User: ", query)
    assert _reply(child) == reply  # the conversation survived
    _ask(child, "User: ", "stop")
    _ends_cleanly(child)


def test_a_one_shot_query_with_undecodable_bytes_is_one_clear_error():
    command = [sys.executable.encode(), b"-m", b"cogvlm.cli", b"chat", *(f.encode() for f in FLAGS)]
    command += [b"--image", str(IMAGE).encode(), b"--query", b"caf\xe9?"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 2
    expected = "cogvlm chat: error: --query is not valid UTF-8 text (it has undecodable bytes)"
    assert result.stderr.strip() == expected


def test_ctrl_c_at_a_prompt_ends_the_session_without_a_traceback():
    child = _spawn()
    _ask(child, IMAGE_PROMPT, str(IMAGE))
    child.expect_exact("User: ")
    child.sendintr()
    _ends_cleanly(child)


def test_ctrl_c_during_an_answer_stops_it_and_keeps_the_session():
    # The golden model never says its end token here, so the answer runs for 900 tokens unless stopped.
    child = _spawn("--stream_chat", "--max_new_tokens", "900")
    _ask(child, IMAGE_PROMPT, str(IMAGE))
    _ask(child, "User: ", "Hello there")
    child.expect_exact("Model: ")
    child.sendintr()
    child.expect_exact(STOPPED_MESSAGE)
    _ask(child, "User: ", "clear")  # the session is still there: back to the image prompt
    _ask(child, IMAGE_PROMPT, "stop")
    _ends_cleanly(child)


def test_image_alone_starts_an_interactive_chat_about_it():
    query, reply = _first_turn()
    child = _spawn("--image", str(IMAGE))
    _ask(child, "User: ", query)  # no image prompt first
    assert _reply(child) == reply
    _ask(child, "User: ", "clear")
    _ask(child, IMAGE_PROMPT, "stop")
    _ends_cleanly(child)


class _Huge(http.server.BaseHTTPRequestHandler):
    """`/announced`: a 1.5 GB Content-Length (no body follows); `/endless`: chunks until the client leaves."""

    sent = 0

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path == "/announced":
            self.send_header("Content-Length", str(1_500_000_000))
            self.end_headers()
            return
        self.end_headers()  # HTTP/1.0, no length: the body ends when the connection closes
        try:
            while _Huge.sent < 1 << 30:
                self.wfile.write(b"\0" * 65536)
                _Huge.sent += 65536
        except OSError:
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def huge_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Huge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Huge.sent = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_image_url_is_read_up_to_a_cap_and_refused_past_it(huge_server):
    with pytest.raises(ImageError, match="larger than 1048576 bytes"):
        read_image(f"{huge_server}/announced", max_bytes=CAP_BYTES)  # refused before reading a byte
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match="larger than 1048576 bytes"):
        read_image(f"{huge_server}/endless", max_bytes=CAP_BYTES)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 << 10, f"peak memory grew by {grown_kib} KiB"
    assert _Huge.sent < 1 << 30  # the client hung up long before the server's gigabyte


def test_interactive_chat_reports_a_huge_image_url_and_goes_on(huge_server):
    child = _spawn()
    _ask(child, IMAGE_PROMPT, f"{huge_server}/announced")
    child.expect_exact(f"{huge_server}/announced: the response is larger than {20 << 20} bytes; refused")
    _ask(child, IMAGE_PROMPT, "stop")
    _ends_cleanly(child)


def test_ctrl_c_in_one_shot_mode_exits_without_a_traceback():
    command = [sys.executable, "-m", "cogvlm.cli", "chat", *FLAGS, "--max_new_tokens", "900", "--stream_chat"]
    command += ["--image", str(IMAGE), "--query", "Hello there"]
    child = pexpect.spawn(command[0], command[1:], encoding="utf-8", timeout=TIMEOUT_S)
    child.expect(r"\S")  # the answer has started (900 tokens: it is far from done)
    child.kill(signal.SIGINT)
    child.expect(pexpect.EOF)
    child.close()
    assert "Traceback" not in child.before
    assert child.exitstatus == 130


def test_a_session_without_a_folder_writes_one_grounding_file_and_a_folder_keeps_each(tmp_path):
    replies = ["a box [[100,100,400,400]]", "no box", "another [[500,500,900,900]]"]
    session = GroundingOutput()
    paths = [session.write(IMAGE, reply) for reply in replies]
    try:
        assert paths[1] is None and paths[0] == paths[2] and paths[0].parent == Path(tempfile.gettempdir())
        last = Image.open(paths[2]).convert("RGB")  # the file holds the latest answer's boxes
        assert last.tobytes() == draw_response(IMAGE, replies[2]).convert("RGB").tobytes()
    finally:
        paths[0].unlink()
    kept = GroundingOutput(tmp_path / "boxes")
    written = [kept.write(IMAGE, reply) for reply in replies]
    assert written[1] is None and written[0] != written[2]
    assert sorted((tmp_path / "boxes").iterdir()) == sorted([written[0], written[2]])
