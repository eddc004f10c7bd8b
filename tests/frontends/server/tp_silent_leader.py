"""Torchrun worker: rank 0 sends one heartbeat and then falls silent; the other ranks must give up.

Usage: torchrun --nproc-per-node 2 tp_silent_leader.py OUT_DIR TIMEOUT_S
Each follower writes `OUT_DIR/rank<N>.txt`: the seconds it waited after the heartbeat, then its error.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cogvlm.errors import TensorParallelFailure
from cogvlm.frontends.server.tp_coordinator import Channel, Command, CoordinationConfig
from cogvlm.launch.distributed import init_parallel_runtime


def main() -> None:
    out_dir, timeout_s = Path(sys.argv[1]), float(sys.argv[2])
    runtime = init_parallel_runtime()
    channel = Channel(runtime, CoordinationConfig(heartbeat_s=timeout_s / 4, timeout_s=timeout_s))
    if runtime.is_first_rank:
        channel.send(Command("heartbeat"))
        time.sleep(timeout_s * 4)  # alive, but silent
        return
    assert channel.receive().kind == "heartbeat"
    started = time.monotonic()
    try:
        channel.receive()
    except TensorParallelFailure as error:
        waited = time.monotonic() - started
        (out_dir / f"rank{runtime.tp.rank}.txt").write_text(f"{waited}\n{error}")


if __name__ == "__main__":
    main()
