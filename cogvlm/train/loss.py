"""The training loss: next-token cross-entropy over answer tokens only, in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cogvlm.text_processors.training import IGNORE_INDEX


def answer_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and target count per sample: logits [batch, seq, vocab], labels [batch, seq].

    Position t predicts label t + 1; labels equal to IGNORE_INDEX (prompt, image, padding) are skipped.
    """
    shifted_logits = logits[:, :-1].float()  # [batch, seq - 1, vocab]
    shifted_labels = labels[:, 1:]  # [batch, seq - 1]
    per_token = F.cross_entropy(
        shifted_logits.transpose(1, 2), shifted_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )  # [batch, seq - 1]
    return per_token.sum(dim=1), (shifted_labels != IGNORE_INDEX).sum(dim=1)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every answer token of the batch (the reference's reduction)."""
    sums, counts = answer_token_losses(logits, labels)
    return sums.sum() / counts.sum().clamp(min=1)
