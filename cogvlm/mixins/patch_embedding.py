"""EVA2-CLIP-E's input: patch convolution, CLS token and absolute positions (`mixins.patch_embedding`)."""

from __future__ import annotations

import torch
from torch import nn

from cogvlm.models.config import VisionConfig
from cogvlm.models.context import ForwardContext
from cogvlm.models.mixin import Mixin


class PatchEmbedding(Mixin):
    """Embeds `ctx.pixel_values` as [CLS, patches] + the position table; token ids are ignored."""

    hook_modes = {"embed_tokens": "replace"}

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        width = config.transformer.hidden_size
        self.proj = nn.Conv2d(
            config.in_channels, width, kernel_size=config.patch_size, stride=config.patch_size
        )

    def embed_tokens(self, transformer, input_ids, ctx: ForwardContext) -> torch.Tensor:
        if ctx.pixel_values is None:
            raise ValueError("the vision tower needs ctx.pixel_values [images, 3, px, px]")
        pixels = ctx.pixel_values.to(self.proj.weight.dtype)
        patches = self.proj(pixels).flatten(2).transpose(1, 2)  # [images, patches, width], row-major grid
        # CLS is row 0 of the tower's one-entry word embedding table.
        cls = (
            transformer.word_embeddings.weight[:1].unsqueeze(0).expand(patches.shape[0], -1, -1)
        )  # [images, 1, width]
        return torch.cat([cls, patches], dim=1) + transformer.position_embeddings.weight.unsqueeze(0)
