"""Normalisation layers with the reference's exact arithmetic."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm as SAT computes it: statistics in float32 and the weight applied before the cast back."""

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        # The casts are no-ops for float32 input; skipping them saves two dispatches per call when decoding.
        states = hidden_states if input_dtype == torch.float32 else hidden_states.float()
        variance = states.pow(2).mean(-1, keepdim=True)
        normalized = hidden_states * torch.rsqrt(variance + self.eps)
        output = self.weight * normalized
        return output if output.dtype == input_dtype else output.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def build_norm(kind: str, hidden_size: int, eps: float) -> nn.Module:
    """Return an RMSNorm (`kind="rms"`) or a LayerNorm with bias (`kind="layer"`)."""
    if kind == "rms":
        return RMSNorm(hidden_size, eps)
    if kind == "layer":
        return nn.LayerNorm(hidden_size, eps=eps)
    raise ValueError(f"unknown norm kind {kind!r}, expected 'rms' or 'layer'")
