"""Training inputs for a (prompt, caption) pair, as the official `llama2_text_processor` builds them.

Sequence: [BOS] + prompt ids (image markers expanded) + caption ids + EOS, padded with `pad_id` to
`max_target_length`. Labels are -100 over the context (BOS, prompt, image slots) and over the padding, and
the token ids over the caption and EOS (unshifted; the loss shifts). The attention mask is causal over the
whole padded length (padding is not masked, only ignored by the labels); positions run on through padding.

Over-long samples (the official code drops the first kind and silently truncates the second):
* context (BOS + prompt + image slots) longer than `max_target_length - 10`: always `SampleTooLong`
  with reason "prompt" (the official code returns None);
* ids before image expansion longer than `max_target_length - image_length - 5`: with
  `on_overflow="skip"` (default) `SampleTooLong` with reason "caption"; with `on_overflow="truncate"` the
  ids are cut there as the official code does, EOS appended, and `was_truncated` is set;
* expanded sequence longer than `max_target_length` (possible only with several images, where the official
  code returns over-long tensors): always `SampleTooLong` with reason "sequence".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from cogvlm.text_processors.image_slots import (
    MARKER_ID,
    TextEncoder,
    check_image_length,
    encode_with_markers,
    expand_markers,
    image_masks,
    position_ids_from_rope_mask,
)
from cogvlm.text_processors.prompts import IMAGE_MARKER, build_prompt, check_version

IGNORE_INDEX = -100
OverflowPolicy = Literal["skip", "truncate"]
_TAGS = re.compile(r"<pad>|<s>|</s>|<EOI>")


@dataclass(frozen=True)
class TrainingInputs:
    """One padded training sample; per-token tensors are [1, max_target_length]."""

    input_ids: torch.Tensor  # long
    labels: torch.Tensor  # long, IGNORE_INDEX outside caption + EOS
    position_ids: torch.Tensor  # long
    attention_mask: torch.Tensor  # float32 [1, 1, T, T], lower-triangular ones
    image_embed_mask: torch.Tensor  # bool
    vision_expert_mask: torch.Tensor  # bool
    image_rope_mask: torch.Tensor  # bool
    context_length: int  # tokens before the caption, image slots expanded
    image_positions: tuple[int, ...]  # eoi index per image
    was_truncated: bool


@dataclass(frozen=True)
class SampleTooLong:
    """Why a sample was not turned into training inputs, with the lengths involved."""

    reason: Literal["prompt", "caption", "sequence"]
    length: int  # the length that broke the limit
    limit: int
    max_target_length: int

    def describe(self) -> str:
        """One line for logs."""
        return (
            f"sample skipped: {self.reason} length {self.length} exceeds {self.limit} "
            f"(max_target_length {self.max_target_length})"
        )


def _template(prompt: str, caption: str, version: str) -> tuple[str, str]:
    """Without `<EOI>`, strip control tags from both texts and apply the single-turn template."""
    if IMAGE_MARKER in prompt:
        return prompt, caption
    return build_prompt(version, _TAGS.sub("", prompt)), _TAGS.sub("", caption)


@dataclass(frozen=True)
class TrainingTokens:
    """A sample's unpadded ids (BOS first, image slots expanded, EOS last) and where its images end."""

    ids: list[int]
    eoi_positions: tuple[int, ...]
    context_length: int  # tokens before the caption, image slots expanded
    was_truncated: bool


def training_tokens(
    tokenizer: TextEncoder,
    caption: str,
    prompt: str,
    *,
    version: str,
    image_length: int,
    max_target_length: int,
    on_overflow: OverflowPolicy = "skip",
) -> TrainingTokens | SampleTooLong:
    """The ids `build_training_inputs` pads, or `SampleTooLong` (see the module docstring)."""
    check_image_length(image_length)
    check_version(version)
    if on_overflow not in ("skip", "truncate"):
        raise ValueError(f"on_overflow must be 'skip' or 'truncate', got {on_overflow!r}")
    prompt, caption = _template(prompt, caption, version)
    ids = [tokenizer.bos_id, *encode_with_markers(tokenizer, prompt)]
    context_length = len(ids) + ids.count(MARKER_ID) * (image_length + 1)
    if context_length > max_target_length - 10:
        return SampleTooLong("prompt", context_length, max_target_length - 10, max_target_length)
    ids += encode_with_markers(tokenizer, caption)
    limit = max_target_length - image_length - 5
    was_truncated = len(ids) > limit
    if was_truncated and on_overflow == "skip":
        return SampleTooLong("caption", len(ids), limit, max_target_length)
    ids, eoi_positions = expand_markers([*ids[:limit], tokenizer.eos_id], image_length)
    if len(ids) > max_target_length:
        return SampleTooLong("sequence", len(ids), max_target_length, max_target_length)
    return TrainingTokens(ids, eoi_positions, context_length, was_truncated)


def token_labels(ids: Sequence[int], context_length: int, image_embed_mask: Sequence[bool]) -> list[int]:
    """The labels of unpadded `ids`: IGNORE_INDEX over the context and over image slots in the caption."""
    labels = [IGNORE_INDEX] * context_length + list(ids[context_length:])
    return [
        IGNORE_INDEX if in_image else label
        for label, in_image in zip(labels, image_embed_mask[: len(labels)], strict=True)
    ]


def build_training_inputs(
    tokenizer: TextEncoder,
    caption: str,
    prompt: str,
    *,
    version: str,
    image_length: int,
    max_target_length: int,
    on_overflow: OverflowPolicy = "skip",
) -> TrainingInputs | SampleTooLong:
    """Training inputs for `caption` answering `prompt`, or `SampleTooLong` (see the module docstring).

    A prompt without `<EOI>` is wrapped in the `version` template with an empty history, as officially.
    """
    tokens = training_tokens(
        tokenizer,
        caption,
        prompt,
        version=version,
        image_length=image_length,
        max_target_length=max_target_length,
        on_overflow=on_overflow,
    )
    if isinstance(tokens, SampleTooLong):
        return tokens
    return _pack(tokens, image_length, max_target_length, tokenizer.pad_id)


def _pack(tokens: TrainingTokens, image_length: int, max_target_length: int, pad_id: int) -> TrainingInputs:
    """Pad to `max_target_length` and build labels, masks and positions."""
    ids, context_length, eoi_positions = tokens.ids, tokens.context_length, tokens.eoi_positions
    pad = max_target_length - len(ids)
    masks = image_masks(max_target_length, eoi_positions, image_length)
    labels = token_labels(ids, context_length, masks.image_embed_mask) + [IGNORE_INDEX] * pad
    rope = torch.tensor([masks.image_rope_mask], dtype=torch.bool)  # [1, T]
    causal = torch.tril(torch.ones(max_target_length, max_target_length))  # [T, T]
    return TrainingInputs(
        input_ids=torch.tensor([ids + [pad_id] * pad], dtype=torch.long),
        labels=torch.tensor([labels], dtype=torch.long),
        position_ids=position_ids_from_rope_mask(rope),
        attention_mask=causal[None, None],  # [1, 1, T, T]
        image_embed_mask=torch.tensor([masks.image_embed_mask], dtype=torch.bool),
        vision_expert_mask=torch.tensor([masks.vision_expert_mask], dtype=torch.bool),
        image_rope_mask=rope,
        context_length=context_length,
        image_positions=eoi_positions,
        was_truncated=tokens.was_truncated,
    )
