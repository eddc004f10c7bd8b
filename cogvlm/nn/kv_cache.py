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
        zeroed: bool = True,
    ) -> None:
        shape = (num_layers, batch_size, num_heads, max_length, head_dim)
        # Unwritten slots may stay uninitialised (`zeroed=False`) only when nothing reads past `length`:
        # a masked read of garbage can still give NaN (0 x NaN) in attention.
        allocate = torch.zeros if zeroed else torch.empty
        self.keys = allocate(shape, dtype=dtype, device=device)
        self.values = allocate(shape, dtype=dtype, device=device)
        # Per-layer views [batch, heads, max_length, head_dim], taken once: decoding writes every step.
        self._layer_keys = self.keys.unbind(0)
        self._layer_values = self.values.unbind(0)
        self.max_length = max_length
        self.length = 0
        self.write_index: torch.Tensor | None = None

    def update(
        self, layer_index: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `key`/`value` [batch, heads, new, head_dim] and return all positions so far."""
        keys, values = self._layer_keys[layer_index], self._layer_values[layer_index]
        if self.write_index is not None:
            keys.index_copy_(2, self.write_index, key)
            values.index_copy_(2, self.write_index, value)
            return keys, values
        new = key.shape[2]
        end = self.length + new
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} were requested")
        keys.narrow(2, self.length, new).copy_(key)
        values.narrow(2, self.length, new).copy_(value)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def advance(self, num_tokens: int) -> None:
        """Mark `num_tokens` more positions as written (called once per forward)."""
        self.length += num_tokens

    def reset(self) -> None:
        """Forget every position, keeping the buffers."""
        self.length = 0
