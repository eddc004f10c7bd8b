"""The language-model head (`mixins.lm.lm_head`), untied from the input embeddings."""

from __future__ import annotations

import torch

from cogvlm.models.config import TransformerConfig
from cogvlm.models.context import ForwardContext
from cogvlm.models.mixin import Mixin
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel
from cogvlm.parallel.layers import ColumnParallelLinear


class LMHead(Mixin):
    """Projects the final hidden states to vocabulary logits (gathered on every rank)."""

    hook_modes = {"final_logits": "replace"}

    def __init__(self, config: TransformerConfig, tp: TensorParallel = NO_PARALLEL) -> None:
        super().__init__()
        self.lm_head = ColumnParallelLinear(
            config.hidden_size, config.vocab_size, bias=False, tp=tp, gather_output=True
        )

    def final_logits(self, transformer, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.lm_head(hidden_states)
