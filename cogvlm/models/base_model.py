"""The mixin host: a base transformer plus named mixins, with hooks resolved into one table."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.utils.checkpoint
from torch import nn

from cogvlm.models.context import CrossMemory, ForwardContext
from cogvlm.models.mixin import HookTable, Mixin, MixinError, check_mixin_hooks, resolve_hooks
from cogvlm.models.transformer import Transformer


@dataclass(frozen=True)
class ModelOutput:
    """Logits (or encoder outputs) and, when asked for, every layer's output before the final norm."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] = ()


class MixinModel(nn.Module):
    """`transformer` + `mixins`; the forward pass goes through the resolved hook table.

    `checkpoint_activations` (set by a trainer) recomputes each layer in the backward pass instead of
    keeping its activations; it only acts while training with gradients enabled.
    """

    def __init__(self, transformer: Transformer) -> None:
        super().__init__()
        self.transformer = transformer
        self.mixins = nn.ModuleDict()
        self._hooks = resolve_hooks({})
        self.checkpoint_activations = False

    @property
    def hooks(self) -> HookTable:
        """The current hook table (rebuilt whenever a mixin is added or removed)."""
        return self._hooks

    def add_mixin(self, name: str, mixin: Mixin) -> None:
        """Add `mixin` under `mixins.<name>`; its hooks take effect at once."""
        if name in self.mixins:
            raise MixinError(f"a mixin named {name!r} already exists ({type(self.mixins[name]).__name__})")
        if not name.isidentifier() or hasattr(nn.ModuleDict(), name):
            raise MixinError(
                f"{name!r} cannot name a mixin (not an identifier, or a reserved nn.Module attribute)"
            )
        check_mixin_hooks(name, mixin)
        candidate = dict(self.mixins.items())
        candidate[name] = mixin
        self._hooks = resolve_hooks(candidate)
        self.mixins[name] = mixin

    def remove_mixin(self, name: str) -> Mixin:
        """Remove and return the mixin called `name`."""
        if name not in self.mixins:
            raise KeyError(f"no mixin named {name!r}; mixins: {list(self.mixins)}")
        mixin = self.mixins.pop(name)
        self._hooks = resolve_hooks(dict(self.mixins.items()))
        return mixin

    def describe_hooks(self) -> str:
        """Who implements each hook point, one line per point."""
        return self._hooks.describe()

    def encode_cross(self, cross_pixel_values: torch.Tensor) -> CrossMemory:
        """Run the cross vision tower once; keep the result across decoding steps to reuse its K/V."""
        return CrossMemory(self._hooks.encode_cross(cross_pixel_values, ForwardContext()))

    def forward(
        self,
        input_ids: torch.Tensor,
        ctx: ForwardContext,
        *,
        output_hidden_states: bool = False,
        last_position_only: bool = False,
    ) -> ModelOutput:
        """Logits [batch, seq, vocab] (seq = 1 with `last_position_only`, all generation needs)."""
        hooks = self._hooks
        if (
            self.transformer.has_cross_attention
            and ctx.cross_memory is None
            and ctx.cross_pixel_values is not None
        ):
            ctx = replace(ctx, cross_memory=self.encode_cross(ctx.cross_pixel_values))
        hidden_states = hooks.embed_tokens(self.transformer, input_ids, ctx)
        per_layer = []
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for layer_index, layer in enumerate(self.transformer.layers):
            if recompute:
                hidden_states = torch.utils.checkpoint.checkpoint(
                    layer, hidden_states, layer_index, ctx, hooks, use_reentrant=False
                )
            else:
                hidden_states = layer(hidden_states, layer_index, ctx, hooks)
            if output_hidden_states:
                per_layer.append(hidden_states)
        if ctx.kv_cache is not None:
            ctx.kv_cache.advance(hidden_states.shape[1])
        if last_position_only:
            hidden_states = hidden_states[:, -1:]
        if self.transformer.config.use_final_layernorm:
            hidden_states = self.transformer.final_layernorm(hidden_states)
        return ModelOutput(hooks.final_logits(self.transformer, hidden_states, ctx), tuple(per_layer))
