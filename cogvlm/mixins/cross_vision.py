"""CogAgent's high-resolution tower as a mixin (`mixins.encoder`): it builds the cross-attention memory."""

from __future__ import annotations

import torch
from torch import nn

from cogvlm.models.config import CrossVisionConfig
from cogvlm.models.context import ForwardContext
from cogvlm.models.mixin import Mixin


class CrossVisionEncoder(Mixin):
    """A high-resolution tower (`vit`, built by the recipe) plus a learned table (`pos_embed`) added to its
    patch features.

    `vit` maps [images, 3, px, px] to [images, patches, width] for the tower `config` describes.
    Implements `encode_cross`: the decoder layers' cross-attention reads what it returns. The tower is
    replicated on every tensor-parallel rank, as in the reference.
    """

    hook_modes = {"encode_cross": "replace"}

    def __init__(self, vit: nn.Module, config: CrossVisionConfig) -> None:
        super().__init__()
        self.vit = vit
        self.pos_embed = nn.Parameter(torch.zeros(config.num_patches, config.width))

    def encode_cross(self, cross_pixel_values: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """[images, 3, px, px] -> encoder outputs [images, patches, width]."""
        return self.vit(cross_pixel_values) + self.pos_embed
