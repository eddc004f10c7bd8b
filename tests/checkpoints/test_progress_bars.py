"""Long reads (archive extraction, checksumming a resumed download, a `.pt` file's CRCs) draw a byte bar on
stderr when it is a terminal, and nothing in a log or pipe. Real processes, stderr on a pseudo-terminal."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.checkpoints.bundles import zip_directory
from tests.golden import golden_dir
from tests.terminal import run_on_terminal

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cogvlm.checkpoints.archive import extract_checkpoint_archive
    from cogvlm.checkpoints.download import _PartialFile
    from cogvlm.checkpoints.validation import verify_zip_crcs
    work = Path(sys.argv[1])
    extract_checkpoint_archive(work / "ckpt.zip", work / "out", "ckpt", progress=sys.argv[2] == "on")
    verify_zip_crcs(work / "out" / "1" / "mp_rank_00_model_states.pt")
    part = _PartialFile(work / "big.zip.part", "http://127.0.0.1/big.zip", size_bytes=1 << 22)
    (work / "big.zip.part.json").write_text(__import__("json").dumps(part.expected))
    print("resumed at", part.open(sys.argv[2] == "on"), file=sys.stderr)
    """
)


def _run(work: Path, progress: str, on_terminal: bool) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", SCRIPT, str(work), progress]
    if not on_terminal:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True)
        return done.stderr
    code, shown = run_on_terminal(command, env, columns=120, timeout=120)
    assert code == 0
    return shown


@pytest.fixture
def work(tmp_path):
    (tmp_path / "ckpt.zip").write_bytes(zip_directory(golden_dir() / "cogvlm" / "sat_checkpoint", "ckpt"))
    (tmp_path / "big.zip.part").write_bytes(os.urandom(1 << 21))
    return tmp_path


def test_bars_are_drawn_on_a_terminal(work):
    stderr = _run(work, "on", on_terminal=True)
    assert "extracting ckpt.zip" in stderr
    assert "checking mp_rank_00_model_states.pt" in stderr
    assert "checksumming big.zip.part" in stderr
    assert "/2.10M" in stderr  # the resumed part's bytes, counted in a unit of 1000
    assert "resumed at 2097152" in stderr


def test_no_bar_when_stderr_is_not_a_terminal(work):
    stderr = _run(work, "on", on_terminal=False)
    assert stderr.strip() == "resumed at 2097152"


def test_no_bar_when_progress_is_off(work):
    stderr = _run(work, "off", on_terminal=True)
    assert "extracting" not in stderr and "checksumming" not in stderr
    assert "resumed at 2097152" in stderr
