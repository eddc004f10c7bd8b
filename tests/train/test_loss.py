"""The loss: shifted cross-entropy on answer tokens only, in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cogvlm.text_processors.training import IGNORE_INDEX
from cogvlm.train.loss import answer_loss, answer_token_losses


def test_position_t_is_scored_against_label_t_plus_one_and_ignored_labels_are_skipped():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 6, 0]])
    sums, counts = answer_token_losses(logits, labels)
    assert counts.tolist() == [2, 4]
    first = F.cross_entropy(logits[0, 1:3], labels[0, 2:4], reduction="sum")
    torch.testing.assert_close(sums[0], first)
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(answer_loss(logits, labels), expected)


def test_low_precision_logits_are_scored_in_float32():
    logits = torch.randn(1, 4, 9).to(torch.bfloat16)
    labels = torch.tensor([[IGNORE_INDEX, 2, 3, 4]])
    loss = answer_loss(logits, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, answer_loss(logits.float(), labels))
