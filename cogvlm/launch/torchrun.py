"""Re-executing a `cogvlm` command under torchrun, one process per tensor-parallel rank."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# Set by torchrun in every worker; its presence means we are already a rank.
WORKER_MARKERS = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


def is_torchrun_worker(environ: dict[str, str] | None = None) -> bool:
    """True inside a process that torchrun started."""
    environ = os.environ if environ is None else environ
    return any(name in environ for name in WORKER_MARKERS)


def torchrun_command(nproc: int, cli_args: Sequence[str], master_port: int | None = None) -> list[str]:
    """The torchrun command line that runs `cogvlm <cli_args>` on `nproc` local ranks.

    `--max-restarts 0` and a short monitor interval make one failed rank end the whole job in about a
    second, with torchrun's report of which rank failed, rather than leaving the others waiting.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        "--monitor-interval=0.5",
    ]
    if master_port is not None:
        command.append(f"--master-port={master_port}")
    else:
        command.append("--standalone")
    return [*command, "-m", "cogvlm.cli", *cli_args]


def without_option(cli_args: Sequence[str], option: str) -> list[str]:
    """`cli_args` without `option VALUE` / `option=VALUE` (torchrun would take `--nproc` for its own flag)."""
    result, skip_next = [], False
    for arg in cli_args:
        if skip_next:
            skip_next = False
        elif arg == option:
            skip_next = True
        elif not arg.startswith(option + "="):
            result.append(arg)
    return result


def relaunch_under_torchrun(nproc: int, cli_args: Sequence[str]) -> None:
    """Replace this process with torchrun running the same command (minus `--nproc`) on `nproc` ranks."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    command = torchrun_command(nproc, without_option(cli_args, "--nproc"))
    os.execv(command[0], command)
