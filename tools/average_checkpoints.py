"""Average the weights of several iterations of one training run into an MP=1 SAT checkpoint.

Usage: python tools/average_checkpoints.py RUN_DIR OUTPUT SOURCE [SOURCE ...] [--weights W [W ...]]
RUN_DIR is a `cogvlm finetune --save` directory (`model_config.json`, `ITERATION/mp_rank_00_...`). A SOURCE
is an ITERATION of RUN_DIR, or DIR:ITERATION of another SAT checkpoint of the same architecture (e.g. the
model a fine-tune started from). OUTPUT gets RUN_DIR's config, its tokenizer when present, and the float32
average, uniform or with the given weights (normalised to sum to 1), written atomically. Used by
tools/train_embedded_dialogue.sh: late checkpoints of one cosine run average to a better model than any of
them, and a short fine-tune blended with its starting point keeps more of what that point knew.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cogvlm.checkpoints.convert import write_sat_directory
from cogvlm.checkpoints.json_files import read_json
from cogvlm.checkpoints.sat_format import MODEL_CONFIG_FILE, load_sat_weights, open_sat_checkpoint

Source = tuple[Path, int]  # a checkpoint folder and one of its iterations


def parse_source(text: str, run: Path) -> Source:
    """`ITERATION` (of `run`) or `DIR:ITERATION`."""
    folder, _, iteration = text.rpartition(":")
    if not iteration.isdigit():
        raise ValueError(f"{text!r}: expected ITERATION or DIR:ITERATION")
    return (Path(folder) if folder else run), int(iteration)


def weighted_average(sources: list[Source], weights: list[float]) -> dict[str, torch.Tensor]:
    """sum(weight * weights of source) over `sources` (each MP=1), every source with the first one's keys
    and shapes; `weights` are normalised to sum to 1."""
    if len(weights) != len(sources) or min(weights) <= 0:
        raise ValueError(f"need one positive weight per source: {len(sources)} sources, weights {weights}")
    shares = [weight / sum(weights) for weight in weights]
    total: dict[str, torch.Tensor] = {}
    first = f"{sources[0][0]} iteration {sources[0][1]}"
    checkpoints = [open_sat_checkpoint(folder, iteration) for folder, iteration in sources]
    for checkpoint in checkpoints:  # every source checked before any weight is read
        if checkpoint.model_parallel_size != 1:
            raise ValueError(
                f"{checkpoint.directory}: model_parallel_size {checkpoint.model_parallel_size}, expected 1"
            )
    for (folder, iteration), checkpoint, share in zip(sources, checkpoints, shares, strict=True):
        where = folder / str(iteration)
        state = load_sat_weights(checkpoint.weight_files[0])
        if total and state.keys() != total.keys():
            raise ValueError(f"{where}: its keys differ from {first}'s")
        for key, value in state.items():
            if key in total and total[key].shape != value.shape:
                raise ValueError(
                    f"{where}: {key} has shape {list(value.shape)}, {list(total[key].shape)} at {first}"
                )
            total[key] = total.get(key, 0) + value.float() * share
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("sources", nargs="+", help="ITERATION of RUN_DIR, or DIR:ITERATION")
    parser.add_argument("--weights", type=float, nargs="+", help="one per source (default: uniform)")
    args = parser.parse_args()
    config_file = args.run / MODEL_CONFIG_FILE
    if not config_file.is_file():
        raise SystemExit(f"{config_file}: not found; RUN_DIR must be a `cogvlm finetune --save` directory")
    try:
        sources = [parse_source(text, args.run) for text in args.sources]
        average = weighted_average(sources, args.weights or [1.0] * len(sources))
    except ValueError as error:
        raise SystemExit(str(error)) from None
    tokenizer = args.run / "tokenizer.model"
    extra = {"tokenizer.model": tokenizer} if tokenizer.is_file() else None
    write_sat_directory(args.output, read_json(config_file), average, extra)
    print(f"wrote the average of {args.sources} (weights {args.weights or 'uniform'}) to {args.output}")


if __name__ == "__main__":
    main()
