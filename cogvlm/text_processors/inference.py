"""Inference inputs for a prompt: token ids, image masks and position ids (official `..._inference`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cogvlm.errors import UserTextError
from cogvlm.text_processors.image_slots import (
    MARKER_ID,
    TextEncoder,
    check_image_length,
    encode_with_markers,
    expand_markers,
    image_masks,
    position_ids_from_rope_mask,
)
from cogvlm.text_processors.prompts import IMAGE_MARKER, History, PromptFormat

__all__ = [
    "TextInputs",
    "build_hf_inference_inputs",
    "build_inference_inputs",
    "build_turn_inputs",
    "position_ids_from_rope_mask",
]


@dataclass(frozen=True)
class TextInputs:
    """Model inputs for one prompt; every tensor is [1, seq]."""

    input_ids: torch.Tensor  # long
    image_embed_mask: torch.Tensor  # bool: boi, image tokens, eoi
    vision_expert_mask: torch.Tensor  # bool: boi and image tokens
    image_rope_mask: torch.Tensor  # bool: image tokens
    position_ids: torch.Tensor  # long
    image_positions: tuple[int, ...]  # index of each image's eoi slot

    @property
    def seq_len(self) -> int:
        """Number of tokens."""
        return self.input_ids.shape[1]

    @property
    def num_images(self) -> int:
        """Number of `<EOI>` markers that were expanded."""
        return len(self.image_positions)


def build_inference_inputs(tokenizer: TextEncoder, prompt: str, image_length: int) -> TextInputs:
    """Token ids and masks for `prompt`, as the official inference text processor builds them.

    ids = [BOS] + ids(text before the first `<EOI>`) + for every `<EOI>`: `image_length + 2` slots of id 0
    followed by ids(text up to the next marker). Each piece is encoded separately, so each gets the
    sentencepiece dummy prefix. No EOS. A prompt without `<EOI>` is text-only (no slots, all masks false);
    unlike the official processor it is not re-wrapped in a template, so build it with `build_prompt`.
    """
    check_image_length(image_length)
    return _inputs([tokenizer.bos_id, *encode_with_markers(tokenizer, prompt)], image_length)


def build_hf_inference_inputs(
    tokenizer: TextEncoder, text: str, image_length: int, has_image: bool = True
) -> TextInputs:
    """Token ids and masks as the HF remote code builds them: [BOS] + image slots + ids(text).

    `text` (from `build_hf_prompt`) is encoded whole, so a `<EOI>` in it is text, as HF encodes it. The
    slots (HF fills them with the pad id, here 0: their embeddings are replaced either way) and the masks
    are those of SAT's prompt with its marker at the start, so where the texts agree the ids do too.
    """
    check_image_length(image_length)
    slots = [MARKER_ID] if has_image else []
    return _inputs([tokenizer.bos_id, *slots, *tokenizer.encode(text)], image_length)


def check_no_image_marker(text: str, where: str) -> None:
    """Refuse user text holding the image marker, which the prompt builder would turn into image slots."""
    if IMAGE_MARKER in text:
        raise UserTextError(f"{where}: the text contains {IMAGE_MARKER!r}, which is reserved for the image")


def build_turn_inputs(
    tokenizer: TextEncoder,
    prompt_format: PromptFormat,
    query: str,
    history: History,
    image_length: int,
    has_image: bool = True,
) -> TextInputs:
    """The inputs of one turn (`query` after `history`) in `prompt_format`'s version and style."""
    check_no_image_marker(query, "the query")
    for turn, (past_query, past_response) in enumerate(history):
        check_no_image_marker(past_query, f"history turn {turn}'s query")
        check_no_image_marker(past_response, f"history turn {turn}'s response")
    text = prompt_format.text(query, history, has_image)
    if prompt_format.style == "hf":
        return build_hf_inference_inputs(tokenizer, text, image_length, has_image)
    return build_inference_inputs(tokenizer, text, image_length)


def _inputs(marked_ids: list[int], image_length: int) -> TextInputs:
    ids, eoi_positions = expand_markers(marked_ids, image_length)
    masks = image_masks(len(ids), eoi_positions, image_length)
    rope = torch.tensor([masks.image_rope_mask], dtype=torch.bool)  # [1, seq]
    return TextInputs(
        input_ids=torch.tensor([ids], dtype=torch.long),
        image_embed_mask=torch.tensor([masks.image_embed_mask], dtype=torch.bool),
        vision_expert_mask=torch.tensor([masks.vision_expert_mask], dtype=torch.bool),
        image_rope_mask=rope,
        position_ids=position_ids_from_rope_mask(rope),
        image_positions=eoi_positions,
    )
