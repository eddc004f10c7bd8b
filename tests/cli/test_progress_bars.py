"""`cogvlm split` and `cogvlm merge` draw progress bars on a terminal and nothing into a pipe."""

from __future__ import annotations

import subprocess
import sys

from tests.terminal import run_on_terminal
from tests.train.conftest import REPO, base_checkpoint, subprocess_env


def _run(args: list[str], on_terminal: bool) -> tuple[int, str]:
    """Run `cogvlm ARGS` with stderr on a pseudo-terminal or a pipe; return its exit code and stderr."""
    command = [sys.executable, "-m", "cogvlm.cli", *args]
    if not on_terminal:
        env, timeout = subprocess_env(), 300
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stderr
    return run_on_terminal(command, subprocess_env(), cwd=REPO, columns=100)


def test_split_and_merge_show_bars_on_a_terminal_only(tmp_path):
    split, merged = tmp_path / "split", tmp_path / "merged"
    code, shown = _run(["split", str(base_checkpoint()), str(split), "--mp", "2"], on_terminal=True)
    assert code == 0 and "reading ranks" in shown and "writing" in shown and "2/2" in shown
    code, shown = _run(["merge", str(split), str(merged)], on_terminal=True)
    assert code == 0 and "reading ranks" in shown and "2/2" in shown and "writing" in shown
    code, quiet = _run(["merge", str(split), str(tmp_path / "again")], on_terminal=False)
    assert code == 0 and "reading ranks" not in quiet and "writing" not in quiet
