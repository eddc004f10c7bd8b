"""Average the weights of several iterations of one training run into an MP=1 SAT checkpoint.

Usage: python tools/average_checkpoints.py RUN_DIR OUTPUT ITERATION [ITERATION ...]
RUN_DIR is a `cogvlm finetune --save` directory (`model_config.json`, `ITERATION/mp_rank_00_...`); OUTPUT
gets its config, its tokenizer when present, and the uniform float32 average, written atomically. Used by
tools/train_embedded_dialogue.sh: late checkpoints of one cosine run average to a better model than any
of them, unlike averages with a model from another run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cogvlm.checkpoints.convert import write_sat_directory
from cogvlm.checkpoints.sat_format import MODEL_CONFIG_FILE, load_sat_weights, open_sat_checkpoint


def average_iterations(run: Path, iterations: list[int]) -> dict[str, torch.Tensor]:
    """The uniform average of the MP=1 weights saved at `iterations` of `run`."""
    total: dict[str, torch.Tensor] = {}
    for iteration in iterations:
        state = load_sat_weights(open_sat_checkpoint(run, iteration).weight_files[0])
        if total and state.keys() != total.keys():
            raise ValueError(f"{run / str(iteration)}: its keys differ from iteration {iterations[0]}'s")
        for key, value in state.items():
            if key in total and total[key].shape != value.shape:
                raise ValueError(
                    f"{run / str(iteration)}: {key} has shape {list(value.shape)}, "
                    f"{list(total[key].shape)} at iteration {iterations[0]}"
                )
            total[key] = total.get(key, 0) + value.float()
    return {key: value / len(iterations) for key, value in total.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("iterations", type=int, nargs="+")
    args = parser.parse_args()
    config_file = args.run / MODEL_CONFIG_FILE
    if not config_file.is_file():
        raise SystemExit(f"{config_file}: not found; RUN_DIR must be a `cogvlm finetune --save` directory")
    checkpoint = open_sat_checkpoint(args.run, args.iterations[0])
    if checkpoint.model_parallel_size != 1:
        raise SystemExit(f"{args.run}: model_parallel_size {checkpoint.model_parallel_size}, expected 1")
    tokenizer = args.run / "tokenizer.model"
    extra = {"tokenizer.model": tokenizer} if tokenizer.is_file() else None
    average = average_iterations(args.run, args.iterations)
    write_sat_directory(args.output, checkpoint.raw_config, average, extra)
    print(f"wrote the average of {args.run} iterations {args.iterations} to {args.output}")


if __name__ == "__main__":
    main()
