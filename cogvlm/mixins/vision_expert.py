"""CogVLM's visual expert: separate attention projections and MLP weights for image tokens.

Tokens in `ctx.vision_token_mask` (boi and the image patches, not eoi) use the `vision_*` weights,
every other token the language weights. Decoding steps carry no mask: all language.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from cogvlm.mixins.gated_mlp import GatedMLP, swiglu
from cogvlm.mixins.rotary import Rotary
from cogvlm.mixins.routing import route_tokens
from cogvlm.models.config import TransformerConfig
from cogvlm.models.context import ForwardContext
from cogvlm.models.transformer import fused_qkv_width
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel
from cogvlm.parallel.layers import ColumnParallelLinear, RowParallelLinear


def _per_layer(count: int, build) -> nn.ModuleList:
    return nn.ModuleList(build() for _ in range(count))


def _copy_linear(target: nn.Module, source: nn.Module) -> None:
    """Copy `source`'s weight into `target`; a quantized pair (a quantized streaming load) copies its
    integers and scales, which is what quantizing the copied float weight would give."""
    target.weight.copy_(source.weight)
    if hasattr(source, "weight_scale"):
        target.weight_scale.copy_(source.weight_scale)
        target.select_kernel()


class VisionExpertMLP(GatedMLP):
    """The SwiGLU MLP with a second set of weights (`vision_*`) for image tokens."""

    hook_modes = {"mlp": "replace"}
    can_init_from_base = True
    base_derived_prefixes = ("vision_",)

    def __init__(self, config: TransformerConfig, tp: TensorParallel = NO_PARALLEL) -> None:
        super().__init__(config, tp)
        hidden, inner, layers = config.hidden_size, config.inner_hidden_size, config.num_layers
        self.vision_dense_h_to_4h_list = _per_layer(
            layers, lambda: ColumnParallelLinear(hidden, inner, bias=False, tp=tp)
        )
        self.vision_dense_4h_to_h_list = _per_layer(
            layers, lambda: RowParallelLinear(inner, hidden, bias=False, tp=tp)
        )
        self.vision_gate_proj = _per_layer(
            layers, lambda: ColumnParallelLinear(hidden, inner, bias=False, tp=tp)
        )

    def mlp(self, layer, layer_index: int, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        if ctx.vision_token_mask is None:  # decoding steps: every token is text
            return self.language_mlp(layer, layer_index, hidden_states)
        language = functools.partial(self.language_mlp, layer, layer_index)
        vision = functools.partial(
            swiglu,
            self.vision_gate_proj[layer_index],
            self.vision_dense_h_to_4h_list[layer_index],
            self.vision_dense_4h_to_h_list[layer_index],
        )
        return route_tokens(hidden_states, ctx.token_routes, language, vision)

    @torch.no_grad()
    def init_from_base(self, model: nn.Module) -> None:
        """Copy the language MLP weights into the vision expert."""
        for index, layer in enumerate(model.transformer.layers):
            _copy_linear(self.vision_dense_h_to_4h_list[index], layer.mlp.dense_h_to_4h)
            _copy_linear(self.vision_dense_4h_to_h_list[index], layer.mlp.dense_4h_to_h)
            _copy_linear(self.vision_gate_proj[index], self.gate_proj[index])


class VisionExpertAttention(Rotary):
    """Rotary attention whose QKV and output projections are routed between the two experts."""

    hook_modes = {"qkv_projection": "replace", "rotate_qk": "replace", "attention_output": "replace"}
    can_init_from_base = True
    base_derived_prefixes = ("vision_",)

    def __init__(self, config: TransformerConfig, tp: TensorParallel = NO_PARALLEL) -> None:
        super().__init__(config)
        hidden, width, layers = config.hidden_size, config.attention_width, config.num_layers
        qkv_width, weights = fused_qkv_width(config), config.qkv_part_weights
        self.vision_query_key_value_list = _per_layer(
            layers,
            lambda: ColumnParallelLinear(hidden, qkv_width, bias=False, tp=tp, parts=3, part_weights=weights),
        )
        self.vision_dense_list = _per_layer(
            layers, lambda: RowParallelLinear(width, hidden, bias=False, tp=tp)
        )

    def qkv_projection(self, layer, layer_index: int, hidden_states: torch.Tensor, ctx: ForwardContext):
        return route_tokens(
            hidden_states,
            ctx.token_routes,
            layer.attention.query_key_value,
            self.vision_query_key_value_list[layer_index],
        )

    def attention_output(self, layer, layer_index: int, context: torch.Tensor, ctx: ForwardContext):
        return route_tokens(
            context, ctx.token_routes, layer.attention.dense, self.vision_dense_list[layer_index]
        )

    @torch.no_grad()
    def init_from_base(self, model: nn.Module) -> None:
        """Copy the language attention projections into the vision expert."""
        for index, layer in enumerate(model.transformer.layers):
            _copy_linear(self.vision_query_key_value_list[index], layer.attention.query_key_value)
            _copy_linear(self.vision_dense_list[index], layer.attention.dense)
