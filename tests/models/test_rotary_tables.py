"""The LLM's rotary cos/sin tables equal the reference's, in float32 and with its bf16 rounding."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cogvlm.nn.rotary import RotaryEmbedding
from tests.golden import golden_dir

REFERENCE = golden_dir() / "rotary_cache_reference.safetensors"


def _reference() -> dict[str, torch.Tensor]:
    if not REFERENCE.is_file():
        pytest.skip(f"the golden set has no {REFERENCE.name}")
    return load_file(REFERENCE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cos_sin_tables_equal_the_reference_bit_for_bit(dtype):
    # In bf16 the reference rounds positions above 256 and the angles (a README quirk): the tables show it.
    # cos/sin of float32 angles: the same on torch's AVX-512, AVX2 and plain kernels (checked on one CPU).
    reference, suffix = _reference(), {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    positions, half = reference[f"cos_cache_{suffix}"].shape
    rotary = RotaryEmbedding(2 * half).to(dtype)  # the buffer in the model dtype, as SAT casts it
    cos, sin = rotary.cos_sin(positions, dtype)
    assert torch.equal(rotary.inv_freq.float(), reference[f"inv_freq_{suffix}"])
    assert torch.equal(cos[:positions].float(), reference[f"cos_cache_{suffix}"])
    assert torch.equal(sin[:positions].float(), reference[f"sin_cache_{suffix}"])
