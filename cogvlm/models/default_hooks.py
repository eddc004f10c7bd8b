"""What each hook point does when no mixin replaces it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cogvlm.models.context import ForwardContext
from cogvlm.nn.attention import attention, merge_heads, split_heads


def embed_tokens(transformer, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """Look the tokens up in `transformer.word_embeddings`."""
    return transformer.word_embeddings(input_ids)


def encode_cross(cross_pixel_values: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """Fail: a model without a cross vision tower has nothing to encode the cross image with."""
    raise ValueError("this model has no cross-attention vision tower; cross_pixel_values cannot be used")


def qkv_projection(layer, layer_index: int, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """The layer's fused query/key/value projection."""
    return layer.attention.query_key_value(hidden_states)


def rotate_qk(layer, layer_index: int, query: torch.Tensor, key: torch.Tensor, ctx: ForwardContext):
    """No position rotation."""
    return query, key


def attend(layer, layer_index: int, query, key, value, ctx: ForwardContext) -> torch.Tensor:
    """Softmax attention, causal or full as the layer is configured."""
    return attention(
        query, key, value, is_causal=layer.attention.is_causal, attention_mask=ctx.attention_mask
    )


def attention_output(layer, layer_index: int, context: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """The layer's attention output projection."""
    return layer.attention.dense(context)


def cross_attend(layer, layer_index: int, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """Attend from every token to the whole cross memory (no mask, no rotary), then project."""
    cross = layer.cross_attention
    key, value = ctx.cross_memory.key_value(layer_index, cross)  # [batch, heads, encoder_seq, head_dim]
    query = split_heads(cross.query(hidden_states), cross.head_dim)  # [batch, heads, seq, head_dim]
    context = F.scaled_dot_product_attention(query, key, value)
    return cross.dense(merge_heads(context))


def mlp(layer, layer_index: int, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """dense_4h_to_h(activation(dense_h_to_4h(x)))."""
    block = layer.mlp
    return block.dense_4h_to_h(block.activation(block.dense_h_to_4h(hidden_states)))


def final_logits(transformer, hidden_states: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """Return the hidden states unchanged (an encoder's output); the LM head mixin replaces this."""
    return hidden_states


DEFAULT_IMPLEMENTATIONS = {
    "embed_tokens": embed_tokens,
    "encode_cross": encode_cross,
    "qkv_projection": qkv_projection,
    "rotate_qk": rotate_qk,
    "attend": attend,
    "attention_output": attention_output,
    "cross_attend": cross_attend,
    "mlp": mlp,
    "final_logits": final_logits,
}
