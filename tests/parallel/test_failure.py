"""A rank that dies takes the whole job down quickly instead of leaving the others waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.golden import golden_dir
from tests.parallel import torchrun_jobs

STARTUP_LIMIT_S = 120
# torchrun polls its workers every 0.5 s; a few seconds covers tearing the survivors down.
SHUTDOWN_LIMIT_S = 15


def _wait_for_pids(folder, count, process):
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while time.monotonic() < deadline:
        pids = sorted(folder.glob("pid.*"))
        if len(pids) == count:
            return [int(path.read_text()) for path in pids]
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.2)
    raise AssertionError("the ranks did not start in time")


def test_killing_one_rank_ends_the_job_within_seconds_with_a_failure(tmp_path):
    checkpoint = golden_dir() / "cogvlm" / "sat_checkpoint"
    command = torchrun_jobs.torchrun(2, "hang_worker.py", str(checkpoint), str(tmp_path))
    process = subprocess.Popen(
        command, env=torchrun_jobs.environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        pids = _wait_for_pids(tmp_path, 2, process)
        killed_at = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        _, stderr = process.communicate(timeout=SHUTDOWN_LIMIT_S)
        elapsed = time.monotonic() - killed_at
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert elapsed < SHUTDOWN_LIMIT_S
    assert "hang_worker.py FAILED" in stderr or "SIGKILL" in stderr
    for pid in pids:
        assert not _alive(pid), f"rank process {pid} survived"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
