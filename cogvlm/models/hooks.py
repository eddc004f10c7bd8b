"""The closed list of hook points through which mixins change a model's forward pass.

Each point has one signature (its parameter names below, in order). A mixin that *replaces* a point
implements exactly that signature; one that *wraps* it takes one more, last parameter `inner`: the
implementation it wraps, with the point's own signature.
"""

from __future__ import annotations

from enum import Enum


class HookPoint(str, Enum):
    """A step of the forward pass that a mixin may replace or wrap."""

    EMBED_TOKENS = "embed_tokens"
    """(transformer, input_ids, ctx) -> hidden [batch, seq, hidden]: token (and image) embeddings."""

    ENCODE_CROSS = "encode_cross"
    """(cross_pixel_values, ctx) -> [batch, encoder_seq, encoder_hidden]: the cross-attention memory."""

    QKV_PROJECTION = "qkv_projection"
    """(layer, layer_index, hidden_states, ctx) -> [batch, seq, 3 * local_width] as [Q | K | V]."""

    ROTATE_QK = "rotate_qk"
    """(layer, layer_index, query, key, ctx) -> (query, key), each [batch, heads, seq, head_dim]."""

    ATTEND = "attend"
    """(layer, layer_index, query, key, value, ctx) -> context [batch, heads, seq, head_dim]."""

    ATTENTION_OUTPUT = "attention_output"
    """(layer, layer_index, context, ctx) -> [batch, seq, hidden]: the attention's output projection."""

    CROSS_ATTEND = "cross_attend"
    """(layer, layer_index, hidden_states, ctx) -> [batch, seq, hidden]: cross-attention to the memory."""

    MLP = "mlp"
    """(layer, layer_index, hidden_states, ctx) -> [batch, seq, hidden]."""

    FINAL_LOGITS = "final_logits"
    """(transformer, hidden_states, ctx) -> output: logits, or the hidden states for an encoder."""


HOOK_PARAMETERS: dict[HookPoint, tuple[str, ...]] = {
    HookPoint.EMBED_TOKENS: ("transformer", "input_ids", "ctx"),
    HookPoint.ENCODE_CROSS: ("cross_pixel_values", "ctx"),
    HookPoint.QKV_PROJECTION: ("layer", "layer_index", "hidden_states", "ctx"),
    HookPoint.ROTATE_QK: ("layer", "layer_index", "query", "key", "ctx"),
    HookPoint.ATTEND: ("layer", "layer_index", "query", "key", "value", "ctx"),
    HookPoint.ATTENTION_OUTPUT: ("layer", "layer_index", "context", "ctx"),
    HookPoint.CROSS_ATTEND: ("layer", "layer_index", "hidden_states", "ctx"),
    HookPoint.MLP: ("layer", "layer_index", "hidden_states", "ctx"),
    HookPoint.FINAL_LOGITS: ("transformer", "hidden_states", "ctx"),
}


class HookMode(str, Enum):
    """How a mixin implements a point."""

    REPLACE = "replace"
    WRAP = "wrap"
