"""The image side of CogVLM (`mixins.eva`): vision tower, GLU adapter and boi/eoi embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cogvlm.mixins.gated_mlp import swiglu
from cogvlm.models.config import TransformerConfig, VisionConfig
from cogvlm.models.context import ForwardContext
from cogvlm.models.mixin import Mixin


class GLUAdapter(nn.Module):
    """Maps vision features to LLM width: `linear_proj` -> LayerNorm -> GELU -> SwiGLU (replicated)."""

    def __init__(self, in_features: int, hidden_size: int, inner_hidden_size: int) -> None:
        super().__init__()
        self.linear_proj = nn.Linear(in_features, hidden_size, bias=False)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.dense_h_to_4h = nn.Linear(hidden_size, inner_hidden_size, bias=False)
        self.gate_proj = nn.Linear(hidden_size, inner_hidden_size, bias=False)
        self.dense_4h_to_h = nn.Linear(inner_hidden_size, hidden_size, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden_states = F.gelu(self.norm1(self.linear_proj(features)))
        return swiglu(self.gate_proj, self.dense_h_to_4h, self.dense_4h_to_h, hidden_states)


class ImageMixin(Mixin):
    """Encodes `ctx.pixel_values` and writes `[boi, image tokens, eoi]` into the image slots.

    `vit_model` is the vision tower the recipe built for `vision` (it returns [images, 1 + patches, width],
    CLS first). `has_pos_embed` adds CogAgent's learned table (`pos_embed`) to the tower output before the
    adapter.
    """

    hook_modes = {"embed_tokens": "replace"}

    def __init__(
        self,
        vit_model: nn.Module,
        vision: VisionConfig,
        llm: TransformerConfig,
        *,
        has_pos_embed: bool = False,
    ) -> None:
        super().__init__()
        self.vit_model = vit_model
        self.linear_proj = GLUAdapter(vision.transformer.hidden_size, llm.hidden_size, llm.inner_hidden_size)
        self.boi = nn.Parameter(torch.zeros(1, 1, llm.hidden_size))
        self.eoi = nn.Parameter(torch.zeros(1, 1, llm.hidden_size))
        if has_pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(vision.num_patches, vision.transformer.hidden_size))
        else:
            self.pos_embed = None

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The tower's output without CLS: [images, patches, vision width]."""
        return self.vit_model(None, ForwardContext(pixel_values=pixel_values)).logits[:, 1:]

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image embeddings at LLM width: [images, patches, hidden]."""
        features = self.vision_features(pixel_values)
        if self.pos_embed is not None:
            features = features + self.pos_embed
        return self.linear_proj(features)

    def embed_tokens(self, transformer, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        embeddings = transformer.word_embeddings(input_ids)  # [batch, seq, hidden]
        if ctx.pixel_values is None:
            return embeddings
        if ctx.image_embed_mask is None:
            raise ValueError("pixel_values were given without image_embed_mask marking the image slots")
        image_embeds = self.encode_images(ctx.pixel_values)
        if ctx.image_token_shuffle is not None:
            shuffle = ctx.image_token_shuffle
            image_embeds = shuffle_patches(image_embeds, shuffle.generator, within_rows=shuffle.within_rows)
        count = image_embeds.shape[0]
        slots = torch.cat(
            [self.boi.expand(count, -1, -1), image_embeds, self.eoi.expand(count, -1, -1)], dim=1
        )
        expected = int(ctx.image_embed_mask.sum())
        if expected != slots.shape[0] * slots.shape[1]:
            raise ValueError(
                f"image_embed_mask marks {expected} slots but {count} image(s) "
                f"fill {slots.shape[0] * slots.shape[1]}"
            )
        return embeddings.masked_scatter(ctx.image_embed_mask.unsqueeze(-1), slots.to(embeddings.dtype))


def shuffle_patches(
    image_embeds: torch.Tensor, generator: torch.Generator, *, within_rows: bool = False
) -> torch.Tensor:
    """Each image's patch embeddings [images, patches, hidden] in an order of its own, drawn from `generator`.

    The LLM gives every image token one position, but causal attention still lets it count the tokens
    before one: a model trained from scratch locates objects by that row-major order (rows well, columns
    hardly) and does not learn to read the tower's position features. Training on shuffled patches removes
    the cue; `within_rows` removes only its column part, keeping the rows of the (square) grid in order.
    """
    images, patches, hidden = image_embeds.shape
    if within_rows:
        grid = math.isqrt(patches)
        if grid * grid != patches:
            raise ValueError(f"within-row shuffling needs a square patch grid, got {patches} patches")
        columns = torch.rand(images, grid, grid, generator=generator).argsort(dim=-1)
        order = (columns + torch.arange(grid)[:, None] * grid).reshape(images, patches)
    else:
        order = torch.stack([torch.randperm(patches, generator=generator) for _ in range(images)])
    return image_embeds.gather(1, order.to(image_embeds.device)[..., None].expand(-1, -1, hidden))
