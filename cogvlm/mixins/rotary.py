"""Rotary position embedding as a mixin (`mixins.rotary.rotary_emb.inv_freq`)."""

from __future__ import annotations

import torch

from cogvlm.models.config import TransformerConfig
from cogvlm.models.context import ForwardContext
from cogvlm.models.mixin import Mixin
from cogvlm.nn.rotary import RotaryEmbedding, apply_rotary


class Rotary(Mixin):
    """Rotates queries and keys by `ctx.position_ids` over the whole head dimension."""

    hook_modes = {"rotate_qk": "replace"}

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.rotary_emb = RotaryEmbedding(config.head_dim, max_positions=config.max_sequence_length)

    def rotate_qk(self, layer, layer_index: int, query: torch.Tensor, key: torch.Tensor, ctx: ForwardContext):
        cos, sin = self.rotary_emb.cos_sin(self.rotary_emb.max_positions, query.dtype)
        positions = ctx.position_ids
        return apply_rotary(query, cos, sin, positions), apply_rotary(key, cos, sin, positions)
