"""Running a command with its stderr on a pseudo-terminal, as a person at a terminal would see it."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
from collections.abc import Sequence
from pathlib import Path


def run_on_terminal(
    command: Sequence[str],
    env: dict[str, str],
    cwd: Path | None = None,
    columns: int = 120,
    timeout: float = 300,
) -> tuple[int, str]:
    """Run `command` with stderr on a pseudo-terminal `columns` wide (stdout discarded); its exit code and
    everything it wrote to stderr."""
    leader, follower = pty.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        follower = None
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        return process.wait(timeout=timeout), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)
        if follower is not None:
            os.close(follower)
