"""A torchrun worker that loads a sharded model and generates forever; rank r writes its pid to OUTPUT/pid.r.

Usage: torchrun --nproc-per-node N hang_worker.py CHECKPOINT OUTPUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from cogvlm.checkpoints.loading import load_model
from cogvlm.launch.distributed import init_parallel_runtime
from cogvlm.models.context import ForwardContext


def main(checkpoint: str, output_dir: str) -> None:
    torch.set_num_threads(1)
    runtime = init_parallel_runtime(timeout_s=600)
    model, _ = load_model(checkpoint, tp=runtime.tp)
    (Path(output_dir) / f"pid.{runtime.tp.rank}").write_text(str(os.getpid()))
    input_ids = torch.arange(1, 9).unsqueeze(0)
    ctx = ForwardContext(position_ids=torch.arange(8).unsqueeze(0))
    with torch.no_grad():
        while True:
            model(input_ids, ctx)


if __name__ == "__main__":
    main(*sys.argv[1:3])
