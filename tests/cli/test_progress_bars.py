"""`cogvlm split` and `cogvlm merge` draw progress bars on a terminal and nothing into a pipe."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios

from tests.train.conftest import REPO, base_checkpoint, subprocess_env


def _run(args: list[str], on_terminal: bool) -> tuple[int, str]:
    """Run `cogvlm ARGS` with stderr on a pseudo-terminal or a pipe; return its exit code and stderr."""
    command = [sys.executable, "-m", "cogvlm.cli", *args]
    if not on_terminal:
        env, timeout = subprocess_env(), 300
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stderr
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        process = subprocess.Popen(
            command, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=terminal
        )
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        return process.wait(timeout=300), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(controller)


def test_split_and_merge_show_bars_on_a_terminal_only(tmp_path):
    split, merged = tmp_path / "split", tmp_path / "merged"
    code, shown = _run(["split", str(base_checkpoint()), str(split), "--mp", "2"], on_terminal=True)
    assert code == 0 and "reading ranks" in shown and "writing" in shown and "2/2" in shown
    code, shown = _run(["merge", str(split), str(merged)], on_terminal=True)
    assert code == 0 and "reading ranks" in shown and "2/2" in shown and "writing" in shown
    code, quiet = _run(["merge", str(split), str(tmp_path / "again")], on_terminal=False)
    assert code == 0 and "reading ranks" not in quiet and "writing" not in quiet
