"""A preallocated key/value cache for incremental decoding."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer in one buffer [layers, batch, heads, max_length, head_dim].

    `length` counts the positions already written; a forward writes its new positions in every layer
    through `update`, and the model calls `advance` once when the forward is done.

    With `write_index` set (a long tensor [new], static shapes for CUDA graphs), `update` writes at those
    positions and returns the whole buffer; the caller's attention mask hides the slots not yet written.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        head_dim: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_layers, batch_size, num_heads, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.max_length = max_length
        self.length = 0
        self.write_index: torch.Tensor | None = None

    def update(
        self, layer_index: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `key`/`value` [batch, heads, new, head_dim] and return all positions so far."""
        if self.write_index is not None:
            self.keys[layer_index].index_copy_(2, self.write_index, key)
            self.values[layer_index].index_copy_(2, self.write_index, value)
            return self.keys[layer_index], self.values[layer_index]
        end = self.length + key.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} were requested")
        self.keys[layer_index, :, :, self.length : end] = key
        self.values[layer_index, :, :, self.length : end] = value
        return self.keys[layer_index, :, :, :end], self.values[layer_index, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        """Mark `num_tokens` more positions as written (called once per forward)."""
        self.length += num_tokens

    def reset(self) -> None:
        """Forget every position, keeping the buffers."""
        self.length = 0
