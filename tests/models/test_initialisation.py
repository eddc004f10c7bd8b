"""Fresh weights follow SAT's initialisation, so that training from scratch starts where it should."""

from __future__ import annotations

import torch

from cogvlm.models.builders import build_model
from cogvlm.models.presets import preset


def test_vision_position_embeddings_start_small_like_the_other_weights():
    torch.manual_seed(0)
    model = build_model(preset("embedded-cogvlm"))
    positions = model.mixins.eva.vit_model.transformer.position_embeddings.weight
    words = model.transformer.word_embeddings.weight
    assert abs(positions.std().item() - 0.02) < 0.002  # torch's default N(0, 1) would give 1.0
    assert abs(words.std().item() - 0.02) < 0.002
