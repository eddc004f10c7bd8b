"""A torchrun worker: loads a grouped-query checkpoint sharded over all ranks; rank 0 saves the logits.

Usage: torchrun --nproc-per-node N grouped_worker.py CHECKPOINT OUTPUT_FILE
"""

from __future__ import annotations

import sys

import torch

from cogvlm.checkpoints.loading import load_model
from cogvlm.launch.distributed import init_parallel_runtime, shutdown
from tests.models.grouped_models import sample_inputs


def main(checkpoint: str, output: str) -> None:
    torch.set_num_threads(1)
    runtime = init_parallel_runtime()
    model, info = load_model(checkpoint, tp=runtime.tp)
    input_ids, ctx = sample_inputs(info.config)
    with torch.no_grad():
        logits = model(input_ids, ctx).logits
    if runtime.is_first_rank:
        torch.save(logits, output)
    shutdown(runtime)


if __name__ == "__main__":
    main(*sys.argv[1:3])
