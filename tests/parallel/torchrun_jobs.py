"""Running the test workers under real torchrun processes (gloo, CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, script: str, *args: str) -> list[str]:
    """The command that runs a worker script of this folder on `nproc` ranks."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        "--monitor-interval=0.5",
        f"--master-port={free_port()}",
        str(WORKERS / script),
        *args,
    ]


def environment() -> dict[str, str]:
    """The test process's environment with the repository importable and one thread per rank."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(nproc: int, script: str, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """Run a worker to completion and return the finished process (output captured)."""
    return subprocess.run(
        torchrun(nproc, script, *args), env=environment(), capture_output=True, text=True, timeout=timeout_s
    )
