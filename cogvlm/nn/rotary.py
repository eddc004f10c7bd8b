"""Rotary position embedding in the GPT-NeoX "rotate half" layout, computed in the model dtype."""

from __future__ import annotations

import torch
from torch import nn


def inverse_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Return `1 / base^(2i/d)` for i < d/2, bit-identical to the reference's buffer."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))


class RotaryEmbedding(nn.Module):
    """Holds `inv_freq` (a checkpoint buffer) and a cos/sin table built in that buffer's dtype.

    The reference builds positions as `arange(n, dtype=inv_freq.dtype)` and the angles in that dtype
    (`pos_idx_in_fp32=False`), so a bf16 model rounds positions above 256 and the angles: reproduced here
    on purpose. The table values do not depend on its length, so it only ever grows.
    """

    computed_buffers = ("inv_freq",)

    def __init__(self, head_dim: int, base: float = 10000.0, max_positions: int = 4096) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.max_positions = max_positions
        self.register_buffer("inv_freq", inverse_frequencies(head_dim, base), persistent=True)
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last_rotation: tuple[object, torch.Tensor, torch.dtype, Rotation] | None = None

    def reset_computed_buffers(self) -> None:
        """Recompute `inv_freq` (after a build on the meta device, or a checkpoint that omits it)."""
        values = inverse_frequencies(self.head_dim, self.base)
        self.inv_freq = values.to(device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        self._table = None

    def reserve(self, length: int) -> None:
        """Make the table cover positions below `length` from the next call on."""
        self.max_positions = max(self.max_positions, length)

    def cos_sin(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Return cos and sin tables `[>= length, head_dim / 2]` in `dtype`."""
        table = self._table
        device = self.inv_freq.device
        if (
            table is None
            or table[0].shape[0] < length
            or table[0].dtype != dtype
            or table[0].device != device
        ):
            positions = torch.arange(
                max(length, self.max_positions), device=device, dtype=self.inv_freq.dtype
            )
            angles = torch.outer(positions, self.inv_freq)  # [positions, head_dim / 2]
            table = (angles.cos().to(dtype), angles.sin().to(dtype))
            self._table = table
        return table

    def rotation(self, position_ids: torch.Tensor, dtype: torch.dtype, forward_key: object) -> Rotation:
        """The `Rotation` of `position_ids` [batch, seq], computed once per forward pass.

        Every layer of one forward pass rotates by the same positions, so the table lookups run for the
        first layer only; `forward_key` (the pass's context object) tells passes apart.
        """
        last = self._last_rotation
        if last is not None and last[0] is forward_key and last[1] is position_ids and last[2] == dtype:
            return last[3]
        cos, sin = self.cos_sin(self.max_positions, dtype)
        rotation = Rotation.at(cos, sin, position_ids)
        self._last_rotation = (forward_key, position_ids, dtype, rotation)
        return rotation

    def _apply(self, fn, recurse=True):
        # A dtype or device change of inv_freq invalidates the table.
        self._table = None
        self._last_rotation = None
        return super()._apply(fn, recurse)


class Rotation:
    """cos and sin of given positions, laid out so that rotating is `x * cos + roll(x, d/2) * signed_sin`.

    `[x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]`, the rotate-half form, with bit-identical results:
    `x1 cos + x2 (-sin)` rounds exactly as `x1 cos - x2 sin`.
    """

    def __init__(self, cos: torch.Tensor, signed_sin: torch.Tensor) -> None:
        self.cos = cos  # [batch, 1, seq, head_dim]: [cos, cos]
        self.signed_sin = signed_sin  # [batch, 1, seq, head_dim]: [-sin, sin]

    @classmethod
    def at(cls, cos: torch.Tensor, sin: torch.Tensor, position_ids: torch.Tensor) -> Rotation:
        """Gather the tables [positions, head_dim / 2] at `position_ids` [batch, seq]."""
        cos = cos[position_ids].unsqueeze(1)  # [batch, 1, seq, head_dim / 2]
        sin = sin[position_ids].unsqueeze(1)
        return cls(torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1))

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rotate `tensor` [batch, heads, seq, head_dim]."""
        swapped = tensor.roll(tensor.shape[-1] // 2, dims=-1)  # [x2, x1]
        return tensor * self.cos + swapped * self.signed_sin


def apply_rotary(
    tensor: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position_ids: torch.Tensor
) -> torch.Tensor:
    """Rotate `tensor` [batch, heads, seq, head_dim] by the angles of `position_ids` [batch, seq]."""
    return Rotation.at(cos, sin, position_ids).apply(tensor)


def reserve_rotary_positions(model: nn.Module, length: int) -> None:
    """Make every rotary table of `model` cover positions below `length`."""
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.reserve(length)
