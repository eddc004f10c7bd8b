"""The base transformer. Module names produce SAT's state-dict keys (`transformer.layers.N.…`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cogvlm.models.config import TransformerConfig
from cogvlm.models.context import ForwardContext
from cogvlm.models.mixin import HookTable
from cogvlm.nn.attention import merge_heads, split_heads
from cogvlm.nn.norms import build_norm
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel
from cogvlm.parallel.layers import INIT_STD, ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}


def fused_qkv_width(config: TransformerConfig) -> int:
    """Output width of a fused [Q; K; V] projection (keys and values are narrower under grouped queries)."""
    return config.attention_width + 2 * config.key_value_width


class SelfAttention(nn.Module):
    """Fused QKV projection (`query_key_value`, rows [Q; K; V]) and output projection (`dense`)."""

    def __init__(self, config: TransformerConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.is_causal = config.is_causal
        # This rank's widths of Q, K and V in the fused projection's output (its shard of the heads).
        widths = (config.attention_width, config.key_value_width, config.key_value_width)
        self.local_qkv_widths = [tp.divide(width, "query/key/value width") for width in widths]
        self.query_key_value = ColumnParallelLinear(
            config.hidden_size,
            fused_qkv_width(config),
            bias=config.use_bias or config.use_qkv_bias,
            tp=tp,
            parts=3,
            part_weights=config.qkv_part_weights,
        )
        self.dense = RowParallelLinear(
            config.attention_width,
            config.hidden_size,
            bias=config.use_bias,
            tp=tp,
            final_bias=config.row_parallel_linear_final_bias,
        )

    @property
    def local_key_value_heads(self) -> int:
        """Key/value heads on this rank: what a KV cache holds per layer."""
        return self.local_qkv_widths[1] // self.head_dim


class CrossAttention(nn.Module):
    """`query` from the hidden states, `key_value` (rows [K; V]) from the encoder outputs, `dense`."""

    def __init__(self, config: TransformerConfig, tp: TensorParallel) -> None:
        super().__init__()
        cross = config.cross_attention
        width = config.num_attention_heads * cross.head_dim
        self.head_dim = cross.head_dim
        self.query = ColumnParallelLinear(config.hidden_size, width, bias=config.use_bias, tp=tp)
        self.key_value = ColumnParallelLinear(
            cross.encoder_hidden_size, 2 * width, bias=config.use_bias, tp=tp, parts=2
        )
        self.dense = RowParallelLinear(width, config.hidden_size, bias=config.use_bias, tp=tp)


class MLP(nn.Module):
    """`dense_h_to_4h` -> activation -> `dense_4h_to_h` (LLaMA's gate lives in the `mlp` mixin)."""

    def __init__(self, config: TransformerConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.activation = ACTIVATIONS[config.activation]
        self.dense_h_to_4h = ColumnParallelLinear(
            config.hidden_size, config.inner_hidden_size, bias=config.use_bias, tp=tp
        )
        self.dense_4h_to_h = RowParallelLinear(
            config.inner_hidden_size,
            config.hidden_size,
            bias=config.use_bias,
            tp=tp,
            final_bias=config.row_parallel_linear_final_bias,
        )


class TransformerLayer(nn.Module):
    """One layer: self-attention, optional cross-attention, MLP, each with its norm and residual."""

    def __init__(self, config: TransformerConfig, layer_index: int, tp: TensorParallel) -> None:
        super().__init__()
        norm_args = (config.norm, config.hidden_size, config.layernorm_epsilon)
        self.is_pre_norm = config.norm_placement == "pre"
        self.input_layernorm = build_norm(*norm_args)
        self.attention = SelfAttention(config, tp)
        self.post_attention_layernorm = build_norm(*norm_args)
        self.mlp = MLP(config, tp)
        has_cross = config.cross_attention is not None and config.cross_attention.layers[layer_index]
        self.cross_attention = CrossAttention(config, tp) if has_cross else None
        self.post_cross_attention_layernorm = build_norm(*norm_args) if has_cross else None

    def forward(self, hidden_states: torch.Tensor, layer_index: int, ctx: ForwardContext, hooks: HookTable):
        if not self.is_pre_norm:
            return self._post_branch_norm_forward(hidden_states, layer_index, ctx, hooks)
        hidden_states = hidden_states + self._attention(
            self.input_layernorm(hidden_states), layer_index, ctx, hooks
        )
        if self.cross_attention is not None and ctx.cross_memory is not None:
            normed = self.post_cross_attention_layernorm(hidden_states)
            hidden_states = hidden_states + hooks.cross_attend(self, layer_index, normed, ctx)
        normed = self.post_attention_layernorm(hidden_states)
        return hidden_states + hooks.mlp(self, layer_index, normed, ctx)

    def _post_branch_norm_forward(self, hidden_states, layer_index, ctx, hooks):
        # EVA2-CLIP-E normalises each branch's output, not its input.
        hidden_states = hidden_states + self.input_layernorm(
            self._attention(hidden_states, layer_index, ctx, hooks)
        )
        return hidden_states + self.post_attention_layernorm(hooks.mlp(self, layer_index, hidden_states, ctx))

    def _attention(
        self, hidden_states, layer_index: int, ctx: ForwardContext, hooks: HookTable
    ) -> torch.Tensor:
        qkv = hooks.qkv_projection(self, layer_index, hidden_states, ctx)  # [batch, seq, local q+k+v width]
        # 3 x [batch, heads, seq, head_dim]; heads = this rank's share (fewer for K, V under grouped queries)
        query, key, value = (
            split_heads(part, self.attention.head_dim)
            for part in qkv.split(self.attention.local_qkv_widths, dim=-1)
        )
        query, key = hooks.rotate_qk(self, layer_index, query, key, ctx)  # [batch, heads, seq, head_dim]
        if ctx.kv_cache is not None:
            key, value = ctx.kv_cache.update(layer_index, key, value)
        context = hooks.attend(self, layer_index, query, key, value, ctx)
        return hooks.attention_output(self, layer_index, merge_heads(context), ctx)


class Transformer(nn.Module):
    """Embeddings, the layer stack and the final norm: SAT's `transformer.*` keys."""

    def __init__(self, config: TransformerConfig, tp: TensorParallel = NO_PARALLEL) -> None:
        super().__init__()
        self.config = config
        self.tp = tp
        self.word_embeddings = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp=tp)
        if config.num_positions:
            self.position_embeddings = nn.Embedding(config.num_positions, config.hidden_size)
            # Normal(0, 0.02) as SAT initialises it; torch's N(0, 1) drowns the patch content when training
            # a vision tower from scratch (the model learns to ignore the image).
            nn.init.normal_(self.position_embeddings.weight, std=INIT_STD)
        self.layers = nn.ModuleList(TransformerLayer(config, index, tp) for index in range(config.num_layers))
        if config.use_final_layernorm:
            self.final_layernorm = build_norm(config.norm, config.hidden_size, config.layernorm_epsilon)

    @property
    def has_cross_attention(self) -> bool:
        """True when any layer cross-attends to an encoder."""
        return self.config.cross_attention is not None
