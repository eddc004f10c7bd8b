"""Several prompts (each with or without an image) as one left-padded batch with per-row positions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cogvlm.text_processors.inference import TextInputs


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt's model inputs: its text and, optionally, its image's pixel values."""

    text: TextInputs
    pixel_values: torch.Tensor | None = None  # [1, 3, px, px]
    cross_pixel_values: torch.Tensor | None = None  # [1, 3, cross_px, cross_px] (CogAgent)


@dataclass(frozen=True)
class PromptBatch:
    """Left-padded prompts. `key_is_valid` is None when no row is padded (a plain causal prefill)."""

    input_ids: torch.Tensor  # [batch, seq] long
    position_ids: torch.Tensor  # [batch, seq] long; padding holds 0
    vision_token_mask: torch.Tensor  # [batch, seq] bool
    image_embed_mask: torch.Tensor  # [batch, seq] bool
    lengths: tuple[int, ...]  # unpadded length of each row
    pixel_values: torch.Tensor | None  # [images, 3, px, px], images in row order
    cross_pixel_values: torch.Tensor | None
    key_is_valid: torch.Tensor | None  # [batch, seq] bool: False on padding

    @property
    def size(self) -> int:
        """Number of rows."""
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        """Padded length."""
        return self.input_ids.shape[1]

    def prefill_attention_mask(self) -> torch.Tensor | None:
        """Bool [batch, 1, seq, seq]: causal, padding keys hidden; a padding query sees only itself."""
        if self.key_is_valid is None:
            return None
        length = self.seq_len
        causal = torch.ones(length, length, dtype=torch.bool, device=self.input_ids.device).tril()
        allowed = causal & self.key_is_valid[:, None, :]  # [batch, seq, seq]
        # A query with no visible key would give NaN; padding queries attend to themselves instead.
        allowed |= torch.eye(length, dtype=torch.bool, device=allowed.device)
        return allowed[:, None]


def _left_pad(rows: list[torch.Tensor], length: int, fill) -> torch.Tensor:
    padded = [torch.nn.functional.pad(row, (length - row.shape[-1], 0), value=fill) for row in rows]
    return torch.cat(padded, dim=0)


def _stack_images(requests: list[GenerationRequest], name: str) -> torch.Tensor | None:
    images = [getattr(r, name) for r in requests if getattr(r, name) is not None]
    return torch.cat(images, dim=0) if images else None


def collate(requests: list[GenerationRequest], pad_id: int = 0) -> PromptBatch:
    """Left-pad the requests' inputs to one length; each row keeps its own position ids."""
    if not requests:
        raise ValueError("a generation batch needs at least one request")
    for index, request in enumerate(requests):
        has_slots = bool(request.text.image_embed_mask.any())
        if has_slots != (request.pixel_values is not None):
            raise ValueError(
                f"request {index}: the prompt has {request.text.num_images} image slot block(s) but "
                f"pixel_values is {'missing' if has_slots else 'given'}"
            )
    texts = [r.text for r in requests]
    lengths = tuple(t.seq_len for t in texts)
    length = max(lengths)
    valid = [torch.ones(1, n, dtype=torch.bool) for n in lengths]
    return PromptBatch(
        input_ids=_left_pad([t.input_ids for t in texts], length, pad_id),
        position_ids=_left_pad([t.position_ids for t in texts], length, 0),
        vision_token_mask=_left_pad([t.vision_expert_mask for t in texts], length, False),
        image_embed_mask=_left_pad([t.image_embed_mask for t in texts], length, False),
        lengths=lengths,
        pixel_values=_stack_images(requests, "pixel_values"),
        cross_pixel_values=_check_cross(requests),
        key_is_valid=None if min(lengths) == length else _left_pad(valid, length, False),
    )


def _check_cross(requests: list[GenerationRequest]) -> torch.Tensor | None:
    has_cross = [r.cross_pixel_values is not None for r in requests]
    if any(has_cross) and not all(has_cross):
        raise ValueError(
            "cross-attention rows need a cross image each: rows "
            f"{[i for i, h in enumerate(has_cross) if not h]} have none (run them in a separate batch)"
        )
    return _stack_images(requests, "cross_pixel_values")
