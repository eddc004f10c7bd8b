"""bf16 and fp16 forwards: measured against float32 and against the reference's own low-precision logits."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cogvlm.checkpoints.loading import load_model
from tests.golden import golden_dir
from tests.golden_models import cases, checkpoint_dirs, image_inputs, require_builder

# Measured on the shared golden CogVLM (CPU, chat_q1, |logit| <= 4.5): our bf16 vs fp32 max |diff| 0.116 (the
# reference's own bf16 run: 0.104), our bf16 vs the reference's bf16 0.043; fp16: 0.014 and 0.009.
# The bounds below allow about 2x the measurement.
TOLERANCE_VS_FP32 = {torch.bfloat16: 0.2, torch.float16: 0.03}
TOLERANCE_VS_REFERENCE = {torch.bfloat16: 0.1, torch.float16: 0.02}
SUFFIX = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def _logits(model, model_dir, tensors, dtype):
    pixels = image_inputs(model_dir)
    from cogvlm.models.context import ForwardContext

    ctx = ForwardContext(
        position_ids=tensors["position_ids"],
        vision_token_mask=tensors["vision_expert_mask"].bool(),
        image_embed_mask=tensors["image_embed_mask"].bool(),
        pixel_values=pixels["pixel_values"].to(dtype),
        cross_pixel_values=pixels["cross_pixel_values"].to(dtype) if "cross_pixel_values" in pixels else None,
    )
    with torch.no_grad():
        return model(tensors["input_ids"], ctx).logits.float()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda d: d.name)
def test_low_precision_forward_stays_close_to_float32_and_to_the_reference(model_dir, dtype):
    require_builder(model_dir)
    model, _ = load_model(model_dir / "sat_checkpoint", dtype=dtype)
    assert model.mixins["rotary"].rotary_emb.inv_freq.dtype == dtype  # rotary in the model dtype, as SAT does
    reference = _reference_logits(model_dir, dtype)
    case = next(iter(reference), sorted(cases(model_dir))[0])
    tensors = cases(model_dir)[case]
    logits = _logits(model, model_dir, tensors, dtype)
    assert torch.isfinite(logits).all()
    assert (logits - tensors["logits"]).abs().max() < TOLERANCE_VS_FP32[dtype]
    if case in reference:
        assert (logits - reference[case]).abs().max() < TOLERANCE_VS_REFERENCE[dtype]


def _reference_logits(model_dir, dtype) -> dict[str, torch.Tensor]:
    """The reference's own low-precision logits of this model, by case (`<model>.<case>.logits_<dtype>`)."""
    path = golden_dir() / "low_precision_logits.safetensors"
    if not path.is_file():
        return {}
    prefix, suffix = f"{model_dir.name}.", f".logits_{SUFFIX[dtype]}"
    found = {
        key.removeprefix(prefix).removesuffix(suffix): value
        for key, value in load_file(path).items()
        if key.startswith(prefix) and key.endswith(suffix)
    }
    return {case: value for case, value in sorted(found.items()) if case in cases(model_dir)}
