"""Progress bars appear on a terminal only: a real pseudo-terminal gets tqdm's bar, a pipe gets nothing."""

from __future__ import annotations

import fcntl
import os
import struct
import termios

from cogvlm.utils.progress import SilentProgress, is_terminal, progress


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal (controller, terminal) 24 rows by 100 columns, like a user's window."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    return controller, terminal


def _drain(descriptor: int) -> bytes:
    os.set_blocking(descriptor, False)
    chunks = []
    while True:
        try:
            chunk = os.read(descriptor, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _run_bar(stream) -> list[int]:
    seen = []
    for value in progress(range(5), total=5, desc="checking data", stream=stream):
        seen.append(value)
    return seen


def test_a_terminal_gets_a_bar_with_its_description_and_count():
    controller, terminal = _terminal()
    try:
        with os.fdopen(terminal, "w", closefd=False) as stream:
            assert is_terminal(stream)
            assert _run_bar(stream) == [0, 1, 2, 3, 4]
            stream.flush()
        shown = _drain(controller).decode()
    finally:
        os.close(controller)
        os.close(terminal)
    assert "checking data" in shown and "5/5" in shown


def test_a_pipe_gets_nothing_and_the_items_all_pass_through():
    reader, writer = os.pipe()
    try:
        with os.fdopen(writer, "w", closefd=False) as stream:
            assert not is_terminal(stream)
            assert isinstance(progress(range(3), desc="x", stream=stream), SilentProgress)
            assert _run_bar(stream) == [0, 1, 2, 3, 4]
            stream.flush()
        assert _drain(reader) == b""
    finally:
        os.close(reader)
        os.close(writer)


def test_enabled_false_silences_even_a_terminal():
    controller, terminal = _terminal()
    try:
        with os.fdopen(terminal, "w", closefd=False) as stream:
            with progress(total=3, desc="evaluate", stream=stream, enabled=False) as bar:
                bar.update(3)
            stream.flush()
        assert _drain(controller) == b""
    finally:
        os.close(controller)
        os.close(terminal)
