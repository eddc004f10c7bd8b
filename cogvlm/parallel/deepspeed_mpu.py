"""Tensor x data parallel process groups, and the thin `mpu` adapter DeepSpeed expects over them.

Ranks are laid out as SAT and Megatron do: tensor-parallel groups are runs of consecutive ranks, and
each data-parallel group holds the ranks with the same tensor-parallel rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch import nn

from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel
from cogvlm.parallel.sharding import collect_shard_rules


@dataclass(frozen=True)
class ParallelLayout:
    """This process's tensor-parallel slice and its data-parallel group."""

    tp: TensorParallel
    data_group: Any
    data_rank: int
    data_size: int


def build_parallel_layout(tp_size: int) -> ParallelLayout:
    """Create the groups for `tp_size` (every rank must call this, in the same order)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if tp_size < 1 or world % tp_size:
        raise ValueError(f"world size {world} is not divisible by tensor parallel size {tp_size}")
    if tp_size == 1:
        return ParallelLayout(NO_PARALLEL, dist.group.WORLD, rank, world)
    tp, data_group = None, None
    for start in range(0, world, tp_size):
        members = list(range(start, start + tp_size))
        group = dist.new_group(members)
        if rank in members:
            tp = TensorParallel(group=group, rank=rank - start, size=tp_size)
    for tp_rank in range(tp_size):
        members = list(range(tp_rank, world, tp_size))
        group = dist.new_group(members)
        if rank in members:
            data_group = group
    return ParallelLayout(tp, data_group, rank // tp_size, world // tp_size)


class DeepSpeedMpu:
    """The model-parallel unit interface DeepSpeed calls (Megatron's names), backed by a `ParallelLayout`."""

    def __init__(self, layout: ParallelLayout) -> None:
        self.layout = layout

    def get_model_parallel_rank(self) -> int:
        """This rank's index in its tensor-parallel group."""
        return self.layout.tp.rank

    def get_model_parallel_world_size(self) -> int:
        """The tensor-parallel size."""
        return self.layout.tp.size

    def get_model_parallel_group(self):
        """The tensor-parallel process group."""
        return self.layout.tp.group

    def get_data_parallel_rank(self) -> int:
        """This rank's index in its data-parallel group."""
        return self.layout.data_rank

    def get_data_parallel_world_size(self) -> int:
        """The data-parallel size."""
        return self.layout.data_size

    def get_data_parallel_group(self):
        """The data-parallel process group."""
        return self.layout.data_group

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_group = get_model_parallel_group


def deepspeed_mpu(layout: ParallelLayout) -> DeepSpeedMpu | None:
    """The adapter for tensor parallelism; None (pure data parallel over the world) at size 1."""
    return DeepSpeedMpu(layout) if layout.tp.is_parallel else None


def mark_tensor_parallel_parameters(model: nn.Module, tp: TensorParallel) -> int:
    """Flag sharded parameters so DeepSpeed's gradient norm counts replicated ones once; return the count."""
    rules = collect_shard_rules(model)
    count = 0
    for name, parameter in model.named_parameters():
        is_sharded = tp.is_parallel and not rules[name].is_replicated
        parameter.tensor_model_parallel = is_sharded
        count += is_sharded
    return count
