"""Activation checkpointing of the LLM and EVA layer loops: same loss and gradients, inference untouched."""

from __future__ import annotations

import torch
import torch.utils.checkpoint

from cogvlm.checkpoints.loading import load_model
from tests.golden import golden_dir
from tests.golden_models import case_context, first_case

COGVLM_DIR = golden_dir() / "cogvlm"


def _loss_and_gradients(llm: bool, vision: bool):
    model, _ = load_model(COGVLM_DIR / "sat_checkpoint")
    model.train()
    model.checkpoint_activations = llm
    model.mixins["eva"].vit_model.checkpoint_activations = vision
    tensors = first_case(COGVLM_DIR)
    ctx = case_context(COGVLM_DIR, tensors)
    loss = model(tensors["input_ids"], ctx).logits.float().pow(2).mean()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_recomputing_layers_gives_the_same_loss_and_gradients():
    reference_loss, reference = _loss_and_gradients(llm=False, vision=False)
    loss, gradients = _loss_and_gradients(llm=True, vision=True)
    # The recomputation repeats the same float32 operations in the same order: bit-identical.
    assert torch.equal(loss, reference_loss)
    assert sorted(gradients) == sorted(reference)
    assert all(torch.equal(gradients[name], reference[name]) for name in reference)
    assert any(name.startswith("mixins.eva.vit_model.transformer.layers.") for name in gradients)


def test_checkpointing_is_inactive_in_eval_mode_and_without_gradients(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.utils.checkpoint was called outside training")

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", refuse)
    model, _ = load_model(COGVLM_DIR / "sat_checkpoint")
    model.checkpoint_activations = True
    tensors = first_case(COGVLM_DIR)
    ctx = case_context(COGVLM_DIR, tensors)
    logits = model(tensors["input_ids"], ctx).logits  # eval mode, gradients enabled
    model.train()
    with torch.no_grad():
        model(tensors["input_ids"], ctx)
    torch.testing.assert_close(logits, tensors["logits"], atol=1e-4, rtol=0)  # the golden parity tolerance
