"""A torchrun worker for the streaming-load tests: each rank loads its shard of a checkpoint three ways and
writes which keys differ.

1. streamed and quantized on the way (`load_model(quant=...)`);
2. the previous path: this rank's float state dict loaded whole, then `quantize_` (with its all-reduce);
3. a quantized checkpoint (`cogvlm convert --quant`, MP=1) split at load.

Usage: torchrun --nproc-per-node N quant_load_worker.py CHECKPOINT QUANTIZED BITS GROUP_SIZE OUTPUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from cogvlm.checkpoints.loading import (
    build_model,
    load_model,
    load_weights,
    read_checkpoint,
    reset_computed_buffers,
)
from cogvlm.launch.distributed import init_parallel_runtime, shutdown
from cogvlm.nn.quantized import QuantConfig, is_quantized, quantize_


def _differing(left, right) -> list[str]:
    left, right = left.state_dict(), right.state_dict()
    if list(left) != list(right):
        return sorted(set(left) ^ set(right)) or ["<key order>"]
    return [k for k, v in left.items() if v.dtype != right[k].dtype or not torch.equal(v, right[k])]


def main(checkpoint: str, quantized: str, bits: str, group_size: str, output_dir: str) -> None:
    torch.set_num_threads(1)
    runtime = init_parallel_runtime()
    tp = runtime.tp
    quant = QuantConfig(int(bits), int(group_size) or None)
    streamed, _ = load_model(checkpoint, dtype=torch.float32, tp=tp, quant=quant)
    info, state = read_checkpoint(checkpoint, tp)
    previous = build_model(info.config, tp, device="meta")
    previous.to(torch.float32)
    previous.to_empty(device="cpu")
    reset_computed_buffers(previous)
    load_weights(previous, state, checkpoint, tp.size)
    quantize_(previous, quant.bits, quant.group_size)
    saved, _ = load_model(quantized, dtype=torch.float32, tp=tp)
    result = {
        "streamed": _differing(streamed, previous),
        "saved": _differing(saved, previous),
        "quantized_layers": sum(is_quantized(module) for module in streamed.modules()),
        "tp_size": tp.size,
    }
    (Path(output_dir) / f"rank{tp.rank}.json").write_text(json.dumps(result))
    shutdown(runtime)


if __name__ == "__main__":
    main(*sys.argv[1:6])
