"""Rotary position embedding as a mixin (`mixins.rotary.rotary_emb.inv_freq`)."""

from __future__ import annotations

import torch

from cogvlm.models.config import TransformerConfig
from cogvlm.models.context import ForwardContext
from cogvlm.models.mixin import Mixin
from cogvlm.nn.rotary import RotaryEmbedding


class Rotary(Mixin):
    """Rotates queries and keys by `ctx.position_ids` over the whole head dimension."""

    hook_modes = {"rotate_qk": "replace"}

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.rotary_emb = RotaryEmbedding(
            config.head_dim, base=config.rotary_base, max_positions=config.max_sequence_length
        )

    def rotate_qk(self, layer, layer_index: int, query: torch.Tensor, key: torch.Tensor, ctx: ForwardContext):
        rotation = self.rotary_emb.rotation(ctx.position_ids, query.dtype, forward_key=ctx)
        return rotation.apply(query), rotation.apply(key)
