"""Decoding with the cross memory cached gives the tokens of recomputing it every step (as SAT does)."""

from __future__ import annotations

import pytest
import torch

from cogvlm.frontends.bench_cross_cache import cross_recompute_flops, decode_greedy, measure_cross_cache
from cogvlm.inference.generate import GenerationConfig, generate
from cogvlm.models.presets import preset
from cogvlm.text_processors import LlamaTokenizer, build_inference_inputs
from tests.golden import generations, golden_dir, greedy_cases, prompts
from tests.golden_models import cases, golden_model, image_inputs, tokenizer_file

MODEL_DIR = golden_dir() / "cogagent"
# gen_step_logits come from the reference's KV-cache loop; ours matches within BLAS-order noise.
STEP_LOGIT_TOLERANCE = dict(atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", greedy_cases(MODEL_DIR))
def test_cached_and_recomputed_cross_attention_decode_the_reference_tokens(case):
    model = golden_model(MODEL_DIR)
    prompt = prompts(MODEL_DIR)[case]["prompt"]
    expected = generations(MODEL_DIR)[case]["new_token_ids"]
    text = build_inference_inputs(
        LlamaTokenizer.from_file(tokenizer_file()), prompt, model.config.image_length
    )
    pixels, cross = image_inputs(MODEL_DIR)["pixel_values"], image_inputs(MODEL_DIR)["cross_pixel_values"]
    cached = decode_greedy(model, text, pixels, cross, len(expected), reuse_cross_memory=True)
    recomputed = decode_greedy(model, text, pixels, cross, len(expected), reuse_cross_memory=False)
    production = generate(
        model,
        text,
        GenerationConfig(max_new_tokens=len(expected), end_token_ids=()),
        pixel_values=pixels,
        cross_pixel_values=cross,
    )
    assert cached.token_ids == recomputed.token_ids == production.token_ids == expected
    # Same operations on the same inputs: the cached keys/values are the recomputed ones, bit for bit.
    assert torch.equal(cached.step_logits, recomputed.step_logits)
    torch.testing.assert_close(
        recomputed.step_logits, cases(MODEL_DIR)[case]["gen_step_logits"], **STEP_LOGIT_TOLERANCE
    )


def test_the_benchmark_reports_identical_tokens_and_both_timings():
    report = measure_cross_cache("tiny-cogagent", new_tokens=3, threads=1)
    assert report["tokens_identical"] is True
    assert report["max_abs_step_logit_difference"] == 0.0
    assert report["new_tokens"] == 3 and report["cross_patches"] == 36
    assert set(report["decode_ms_per_token"]) == {"cached", "recomputed"}
    assert report["saving_ms_per_token"] == pytest.approx(
        report["decode_ms_per_token"]["recomputed"] - report["decode_ms_per_token"]["cached"], abs=1e-3
    )


def test_the_benchmark_refuses_a_model_without_cross_attention():
    with pytest.raises(ValueError, match="'tiny-cogvlm' is a CogVLMModel; the benchmark needs a CogAgent"):
        measure_cross_cache("tiny-cogvlm", new_tokens=3, threads=1)


def test_the_benchmark_needs_at_least_one_decoding_step():
    with pytest.raises(ValueError, match="new_tokens must be >= 2"):
        measure_cross_cache("tiny-cogagent", new_tokens=1, threads=1)


def test_the_recompute_cost_estimate_counts_tower_and_key_values():
    # tiny-cogagent: 36 patches (+CLS = 37 tokens), width 32, SwiGLU 85, 2 of 3 blocks run, 2 layers x 4 x 8.
    patch_embedding = 2 * 36 * 3 * 14 * 14 * 32
    block = 8 * 37 * 32**2 + 4 * 37**2 * 32 + 6 * 37 * 32 * 85
    key_values = 2 * 2 * 36 * 32 * (2 * 4 * 8)
    assert cross_recompute_flops(preset("tiny-cogagent")) == patch_embedding + 2 * block + key_values
