"""Image slots in a token sequence: marker expansion, the three image masks, and RoPE position ids.

An `<EOI>` marker becomes `image_length + 2` slots, all holding token id 0: boi, the image tokens, eoi.
With e the index of eoi and n = image_length (official `llama2_text_processor*`):
`image_embed_mask` covers [e-n-1, e] (embeddings replaced by boi, image features, eoi),
`vision_expert_mask` covers [e-n-1, e-1] (boi and image tokens use the vision expert; eoi does not),
`image_rope_mask` covers [e-n, e-1] (image tokens, which share one position id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from cogvlm.text_processors.prompts import IMAGE_MARKER

# Stands for an `<EOI>` marker in id lists before expansion; never a real token id.
MARKER_ID = -100
IMAGE_SLOT_ID = 0


class TextEncoder(Protocol):
    """What the text processors need from a tokenizer."""

    @property
    def bos_id(self) -> int:
        """Id of `<s>`."""
        ...

    @property
    def eos_id(self) -> int:
        """Id of `</s>`."""
        ...

    @property
    def pad_id(self) -> int:
        """Id used for padding."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS/EOS."""
        ...


@dataclass(frozen=True)
class ImageMasks:
    """The three per-token image masks, as Python lists of bools."""

    image_embed_mask: list[bool]
    vision_expert_mask: list[bool]
    image_rope_mask: list[bool]


def check_image_length(image_length: int) -> None:
    """Raise a ValueError unless `image_length` is a positive int."""
    if isinstance(image_length, bool) or not isinstance(image_length, int) or image_length < 1:
        raise ValueError(f"image_length must be a positive int, got {image_length!r}")


def encode_with_markers(tokenizer: TextEncoder, text: str) -> list[int]:
    """Ids of `text` with `MARKER_ID` for each `<EOI>`; every piece between markers is encoded on its own."""
    first, *rest = text.split(IMAGE_MARKER)
    ids = tokenizer.encode(first)
    for piece in rest:
        ids += [MARKER_ID, *tokenizer.encode(piece)]
    return ids


def expand_markers(ids: Sequence[int], image_length: int) -> tuple[list[int], tuple[int, ...]]:
    """Replace each marker by `image_length + 2` zero slots; return the ids and each image's eoi index."""
    expanded: list[int] = []
    eoi_positions: list[int] = []
    for token_id in ids:
        if token_id == MARKER_ID:
            expanded += [IMAGE_SLOT_ID] * (image_length + 2)
            eoi_positions.append(len(expanded) - 1)
        else:
            expanded.append(token_id)
    return expanded, tuple(eoi_positions)


def image_masks(length: int, eoi_positions: Sequence[int], image_length: int) -> ImageMasks:
    """The embed / vision-expert / rope masks over `length` tokens for images ending at `eoi_positions`."""
    embed = [False] * length
    expert = [False] * length
    rope = [False] * length
    n = image_length
    for e in eoi_positions:
        embed[e - n - 1 : e + 1] = [True] * (n + 2)
        expert[e - n - 1 : e] = [True] * (n + 1)
        rope[e - n : e] = [True] * n
    return ImageMasks(embed, expert, rope)


def position_ids_from_rope_mask(image_rope_mask: torch.Tensor) -> torch.Tensor:
    """RoPE position ids: +1 per token, except that each run of image tokens shares one position.

    The counter advances at every token outside the mask and at the first token of each run inside it, and
    starts at 0. (The official loop would give -1 to a sequence that starts inside the mask; a CogVLM
    sequence always starts with BOS, so this never differs in practice.)
    Works on any leading shape; the last dimension is the sequence.
    """
    mask = image_rope_mask.bool()
    previous = torch.zeros_like(mask)
    previous[..., 1:] = mask[..., :-1]
    advances = ~mask | ~previous  # [..., seq]: outside the mask, or first token of a run
    return torch.cumsum(advances.long(), dim=-1) - 1
