"""Scaled dot-product attention with the causal layouts that prefill, decode and chunked steps need."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_mask_with_offset(query_length: int, key_length: int, device: torch.device) -> torch.Tensor:
    """Bool mask [query_length, key_length]: query i sees keys up to `key_length - query_length + i`."""
    ones = torch.ones(query_length, key_length, dtype=torch.bool, device=device)
    return ones.tril(diagonal=key_length - query_length)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    is_causal: bool,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention over [batch, heads, seq, head_dim] tensors, scale 1/sqrt(head_dim).

    `attention_mask` (bool, True = may attend, broadcastable to [batch, heads, q, k]) overrides the
    causal layout. A causal query shorter than its keys is aligned to the end (KV cache). Keys and values
    with fewer heads than the query serve groups of query heads (grouped-query attention).
    """
    # Only passed when needed, so attention without grouping calls SDPA exactly as before.
    grouped = {"enable_gqa": True} if key.shape[1] != query.shape[1] else {}
    if attention_mask is not None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, **grouped)
    query_length, key_length = query.shape[-2], key.shape[-2]
    if not is_causal or query_length == 1:
        return F.scaled_dot_product_attention(query, key, value, **grouped)
    if query_length == key_length:
        return F.scaled_dot_product_attention(query, key, value, is_causal=True, **grouped)
    mask = causal_mask_with_offset(query_length, key_length, query.device)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, **grouped)


def split_heads(tensor: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim]."""
    batch, length, width = tensor.shape
    return tensor.view(batch, length, width // head_dim, head_dim).transpose(1, 2)


def merge_heads(tensor: torch.Tensor) -> torch.Tensor:
    """[batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim]."""
    batch, heads, length, head_dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, length, heads * head_dim)
