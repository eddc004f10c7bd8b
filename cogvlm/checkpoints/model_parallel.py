"""Offline re-sharding of SAT checkpoints: split MP=1 into N ranks, merge N ranks back into one.

Reading the ranks and writing them show a progress bar on a terminal (`cogvlm.utils.progress`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch

from cogvlm.checkpoints.config_fields import MAX_MODEL_PARALLEL
from cogvlm.checkpoints.sat_format import (
    config_from_sat,
    load_sat_weights,
    open_sat_checkpoint,
    save_sat_checkpoint,
)
from cogvlm.checkpoints.validation import check_parallel_layout
from cogvlm.errors import CheckpointError
from cogvlm.models.builders import build_model
from cogvlm.models.config import CogVLMConfig
from cogvlm.parallel.sharding import ShardRule, collect_shard_rules, shard_state_dict, unshard_state_dicts
from cogvlm.utils.progress import progress


class RanksWithProgress(Sequence):
    """Rank state dicts made on demand as they are written, with a bar over the ranks written."""

    def __init__(self, make: Callable[[int], Mapping[str, torch.Tensor]], count: int, desc: str) -> None:
        self._make, self._count, self._desc = make, count, desc

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, rank: int) -> Mapping[str, torch.Tensor]:
        if not 0 <= rank < self._count:
            raise IndexError(rank)
        return self._make(rank)

    def __iter__(self) -> Iterator[Mapping[str, torch.Tensor]]:
        with progress(total=self._count, desc=self._desc, unit="rank") as bar:
            for rank in range(self._count):
                yield self._make(rank)
                bar.update(1)


def shard_rules_for(config: CogVLMConfig) -> dict[str, ShardRule]:
    """Every state-dict key's shard rule, from a model built on the meta device (no process group)."""
    return collect_shard_rules(build_model(config, device="meta"))


def expected_shard_shape(shape: tuple[int, ...], rule: ShardRule, size: int) -> tuple[int, ...]:
    """The shape each of `size` ranks holds of a tensor whose whole shape is `shape`."""
    if rule.is_replicated:
        return shape
    split = list(shape)
    split[rule.dim] //= size
    return tuple(split)


def _read_all(source: Path):
    checkpoint = open_sat_checkpoint(source)
    files = checkpoint.weight_files
    shards = [load_sat_weights(path) for path in progress(files, desc="reading ranks", unit="rank")]
    config = config_from_sat(
        checkpoint.raw_config,
        source=str(source / "model_config.json"),
        state_shapes={key: tuple(value.shape) for key, value in shards[0].items()},
    )
    return checkpoint, config, shards


def check_shards(
    shards: list[dict[str, torch.Tensor]], rules: dict[str, ShardRule], files: tuple[Path, ...]
) -> None:
    """Every rank has the same keys, split tensors agree in shape, replicated ones are equal."""
    keys = set(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != keys:
            difference = sorted(set(shard) ^ keys)[:5]
            raise CheckpointError(f"{files[rank]}: its keys differ from {files[0]}'s: {difference}")
    for key in sorted(keys):
        rule = rules.get(key)
        if rule is None:
            raise CheckpointError(f"{files[0]}: unexpected key {key} for this model")
        for rank, shard in enumerate(shards[1:], start=1):
            if shard[key].shape != shards[0][key].shape:
                raise CheckpointError(
                    f"{files[rank]}: key {key} has shape {tuple(shard[key].shape)}, "
                    f"but {files[0].name} has {tuple(shards[0][key].shape)}"
                )
            if rule.is_replicated and not torch.equal(shard[key], shards[0][key]):
                raise CheckpointError(
                    f"{files[rank]}: replicated key {key} differs from {files[0].name}'s copy"
                )


def merge_checkpoint(source: str | Path, target: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write the MP=1 checkpoint equivalent to the MP=N checkpoint at `source` (atomically), its
    floating-point weights cast to `dtype` when one is given."""
    source, target = Path(source), Path(target)
    checkpoint, config, shards = _read_all(source)
    rules = shard_rules_for(config)
    check_shards(shards, rules, checkpoint.weight_files)
    merged = unshard_state_dicts(shards, rules)
    whole_shapes = build_model(config, device="meta").state_dict()
    for key, tensor in merged.items():
        if key not in whole_shapes:
            raise CheckpointError(f"{source}: unexpected key {key} for this model")
        if tuple(tensor.shape) != tuple(whole_shapes[key].shape):
            raise CheckpointError(
                f"{source}: merged key {key} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(whole_shapes[key].shape)} "
                f"(the checkpoint says model_parallel_size={checkpoint.model_parallel_size})"
            )
    missing = sorted(set(whole_shapes) - set(merged))
    if missing:
        raise CheckpointError(f"{source}: missing keys {missing[:8]}")
    if dtype is not None:
        merged = {key: t.to(dtype) if t.is_floating_point() else t for key, t in merged.items()}
    return save_sat_checkpoint(target, config, RanksWithProgress(lambda _: merged, 1, "writing"))


def split_checkpoint(source: str | Path, target: str | Path, model_parallel_size: int) -> Path:
    """Write `source` (any MP size) split into `model_parallel_size` ranks at `target` (atomically)."""
    source, target = Path(source), Path(target)
    if isinstance(model_parallel_size, bool) or not 1 <= model_parallel_size <= MAX_MODEL_PARALLEL:
        raise ValueError(f"--mp must be 1 to {MAX_MODEL_PARALLEL}, got {model_parallel_size}")
    checkpoint, config, shards = _read_all(source)
    check_parallel_layout(config, model_parallel_size, str(source), "--mp")
    rules = shard_rules_for(config)
    check_shards(shards, rules, checkpoint.weight_files)
    whole = unshard_state_dicts(shards, rules) if len(shards) > 1 else shards[0]
    for key, tensor in whole.items():
        rule = rules.get(key)
        if rule is None:
            raise CheckpointError(f"{source}: unexpected key {key} for this model")
        if not rule.is_replicated and not rule.splits_evenly(tensor.shape[rule.dim], model_parallel_size):
            raise CheckpointError(
                f"{source}: key {key} of shape {tuple(tensor.shape)} cannot be split into "
                f"{model_parallel_size} ranks along dimension {rule.dim}"
            )
    ranks = RanksWithProgress(
        lambda rank: shard_state_dict(whole, rules, rank, model_parallel_size), model_parallel_size, "writing"
    )
    return save_sat_checkpoint(target, config, ranks)
