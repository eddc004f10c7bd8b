"""Column-, row- and vocab-parallel layers. At tensor-parallel size 1 they are plain layers.

Each layer declares how its tensors are sharded (`shard_rules`), so that loading, the split and
merge commands and the tests all derive the same layout from the module tree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cogvlm.parallel.collectives import (
    copy_to_parallel,
    gather_from_parallel,
    reduce_from_parallel,
)
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel
from cogvlm.parallel.sharding import REPLICATED, ShardRule

# SAT keeps vocabularies smaller than this as a plain, replicated embedding.
MIN_SPLIT_VOCAB_SIZE = 1000
INIT_STD = 0.02


class _ParallelLinear(nn.Module):
    """What both parallel linears share: SAT's initialisation and the local matmul."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights and zero bias, as SAT initialises linears."""
        nn.init.normal_(self.weight, std=INIT_STD)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def project(self, hidden_states: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The local matrix product (quantized layers replace only this)."""
        return F.linear(hidden_states, self.weight, bias)


class ColumnParallelLinear(_ParallelLinear):
    """y = x W^T + b with W split by output rows; `parts` marks fused blocks (QKV = 3).

    The fused blocks are equal unless `part_weights` gives their relative sizes (see `ShardRule`).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        tp: TensorParallel = NO_PARALLEL,
        parts: int = 1,
        part_weights: tuple[int, ...] | None = None,
        gather_output: bool = False,
    ) -> None:
        super().__init__()
        rule = ShardRule(0, parts, part_weights)
        if not rule.splits_evenly(out_features, tp.size):
            raise ValueError(
                f"out_features {out_features} does not split into {parts} parts x {tp.size} ranks"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.tp = tp
        self.gather_output = gather_output
        local_out = out_features // tp.size
        self.weight = nn.Parameter(torch.empty(local_out, in_features))
        self.bias = nn.Parameter(torch.empty(local_out)) if bias else None
        self.shard_rules = {"weight": rule, "bias": rule}
        self.reset_parameters()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        output = self.project(copy_to_parallel(hidden_states, self.tp), self.bias)
        return gather_from_parallel(output, self.tp) if self.gather_output else output

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, tp={self.tp.size}, bias={self.bias is not None}"
        )


class RowParallelLinear(_ParallelLinear):
    """y = x W^T + b with W split by input columns and the partial products all-reduced.

    With `final_bias=False` (SAT's `row_parallel_linear_final_bias: false`, used by EVA) each rank
    adds `bias / tp_size` before the all-reduce instead of adding `bias` after it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        tp: TensorParallel = NO_PARALLEL,
        final_bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.tp = tp
        self.final_bias = final_bias
        self.weight = nn.Parameter(torch.empty(out_features, tp.divide(in_features, "in_features")))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.shard_rules = {"weight": ShardRule(1), "bias": REPLICATED}
        self.reset_parameters()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.tp.is_parallel:
            return self.project(hidden_states, self.bias)
        if self.bias is None:
            return reduce_from_parallel(self.project(hidden_states, None), self.tp)
        if self.final_bias:
            return reduce_from_parallel(self.project(hidden_states, None), self.tp) + self.bias
        partial = self.project(hidden_states, self.bias / self.tp.size)
        return reduce_from_parallel(partial, self.tp)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, tp={self.tp.size}, bias={self.bias is not None}"
        )


class VocabParallelEmbedding(nn.Module):
    """Token embedding split by vocabulary rows (replicated when the vocabulary is small, as in SAT)."""

    def __init__(self, vocab_size: int, hidden_size: int, *, tp: TensorParallel = NO_PARALLEL) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.tp = tp
        is_split = vocab_size >= MIN_SPLIT_VOCAB_SIZE
        self.shard_rules = {"weight": ShardRule(0) if is_split else REPLICATED}
        self.is_split = is_split and tp.is_parallel
        local_vocab = tp.divide(vocab_size, "vocab_size") if self.is_split else vocab_size
        self.vocab_start = tp.rank * local_vocab if self.is_split else 0
        self.weight = nn.Parameter(torch.empty(local_vocab, hidden_size))
        nn.init.normal_(self.weight, std=INIT_STD)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.is_split:
            return F.embedding(input_ids, self.weight)
        local_ids = input_ids - self.vocab_start
        outside = (local_ids < 0) | (local_ids >= self.weight.shape[0])
        embeddings = F.embedding(local_ids.masked_fill(outside, 0), self.weight)
        embeddings = embeddings.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_parallel(embeddings, self.tp)
