"""LLaMA's SwiGLU MLP: the per-layer gate (`mixins.mlp.gate_proj.N`) beside the base up/down."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cogvlm.models.config import TransformerConfig
from cogvlm.models.context import ForwardContext
from cogvlm.models.mixin import Mixin
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel
from cogvlm.parallel.layers import ColumnParallelLinear


def swiglu(gate: nn.Module, up: nn.Module, down: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """down(silu(gate(x)) * up(x))."""
    return down(F.silu(gate(hidden_states)) * up(hidden_states))


class GatedMLP(Mixin):
    """Replaces the base MLP with `dense_4h_to_h(silu(gate_proj(x)) * dense_h_to_4h(x))`."""

    hook_modes = {"mlp": "replace"}

    def __init__(self, config: TransformerConfig, tp: TensorParallel = NO_PARALLEL) -> None:
        super().__init__()
        self.gate_proj = nn.ModuleList(
            ColumnParallelLinear(config.hidden_size, config.inner_hidden_size, bias=False, tp=tp)
            for _ in range(config.num_layers)
        )

    def mlp(self, layer, layer_index: int, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.language_mlp(layer, layer_index, hidden_states)

    def language_mlp(self, layer, layer_index: int, hidden_states: torch.Tensor) -> torch.Tensor:
        """The SwiGLU of the base weights."""
        block = layer.mlp
        return swiglu(self.gate_proj[layer_index], block.dense_h_to_4h, block.dense_4h_to_h, hidden_states)
