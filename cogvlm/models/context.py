"""What one forward pass knows besides the hidden states: positions, masks, images, caches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from cogvlm.mixins.routing import TokenRoutes
from cogvlm.nn.attention import split_heads

if TYPE_CHECKING:
    from cogvlm.nn.kv_cache import KVCache


@dataclass(frozen=True)
class PatchShuffle:
    """Training's patch-order augmentation: each image's patch embeddings are permuted with draws from
    `generator` before they enter the LLM; `within_rows` keeps each row of the patch grid in place and
    permutes the patches inside it (see `FinetuneConfig.shuffle_image_tokens`)."""

    generator: torch.Generator
    within_rows: bool = False


@dataclass
class CrossMemory:
    """Encoder outputs for cross-attention and, per layer, their keys and values once computed.

    Keeping one `CrossMemory` across decoding steps computes each layer's cross K/V once per image
    instead of once per step.
    """

    encoder_outputs: torch.Tensor | None  # [batch, encoder_seq, encoder_hidden]; None once all are cached
    key_values: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def key_value(
        self, layer_index: int, cross_attention: torch.nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return this layer's cross keys and values [batch, heads, encoder_seq, head_dim]."""
        cached = self.key_values.get(layer_index)
        if cached is None:
            if self.encoder_outputs is None:
                raise ValueError(f"cross-attention memory has no keys/values for layer {layer_index}")
            fused = cross_attention.key_value(self.encoder_outputs)  # [batch, encoder_seq, 2 * width]
            key, value = fused.chunk(2, dim=-1)
            # Contiguous per head: decoding reads these every step, and strided keys slow attention down.
            cached = (
                split_heads(key, cross_attention.head_dim).contiguous(),
                split_heads(value, cross_attention.head_dim).contiguous(),
            )
            if not torch.is_grad_enabled():
                self.key_values[layer_index] = cached
        return cached


@dataclass(frozen=True)
class ForwardContext:
    """Everything a hook may read during one forward pass.

    Masks are bool tensors [batch, seq]. `attention_mask` (bool [batch, 1, seq, keys], True = may
    attend) overrides the layer's causal or full default; left-padded batches pass one.
    """

    position_ids: torch.Tensor | None = None  # [batch, seq]
    attention_mask: torch.Tensor | None = None
    vision_token_mask: torch.Tensor | None = None  # tokens routed to the vision experts
    image_embed_mask: torch.Tensor | None = None  # slots overwritten by [boi, image, eoi]
    pixel_values: torch.Tensor | None = None  # [images, 3, px, px]
    cross_pixel_values: torch.Tensor | None = None  # [images, 3, cross_px, cross_px]
    cross_memory: CrossMemory | None = None
    kv_cache: KVCache | None = None
    image_token_shuffle: PatchShuffle | None = None  # training's patch-order augmentation
    _found: dict[str, TokenRoutes] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def token_routes(self) -> TokenRoutes | None:
        """The visual expert's routing of `vision_token_mask`, found once and shared by every layer."""
        # Not a functools.cached_property: on Python 3.11 its lock breaks a torch.compile graph at every
        # read, which made each compiled decoding step some 40 graphs.
        if self.vision_token_mask is None:
            return None
        routes = self._found.get("token_routes")
        if routes is None:
            routes = self._found["token_routes"] = TokenRoutes.from_mask(self.vision_token_mask)
        return routes
