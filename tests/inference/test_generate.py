"""Generation reproduces the reference's greedy continuations, step logits and position ids."""

from __future__ import annotations

import pytest
import torch

from cogvlm.errors import PromptTooLongError
from cogvlm.inference.generate import GenerationConfig, generate
from cogvlm.text_processors import LlamaTokenizer, build_inference_inputs, extract_response
from tests.golden import continued_case, generations, prompts
from tests.golden_models import (
    cases,
    checkpoint_dirs,
    golden_model,
    image_inputs,
    require_builder,
    tokenizer_file,
)

# gen_step_logits come from the reference's KV-cache loop; ours matches within BLAS-order noise.
STEP_LOGIT_TOLERANCE = dict(atol=1e-4, rtol=0)


def generation_cases():
    items = []
    for model_dir in checkpoint_dirs():
        for name, case in generations(model_dir).items():
            items.append((model_dir, name, continued_case(model_dir, name), case))
    return items


def _run(model_dir, base, case):
    prompt = prompts(model_dir)[base]
    tokenizer = LlamaTokenizer.from_file(tokenizer_file())
    model = golden_model(model_dir)
    text = build_inference_inputs(tokenizer, prompt["prompt"], model.config.image_length)
    new_tokens = generations(model_dir)[base]["max_new_tokens"]
    config = GenerationConfig(
        max_length=text.seq_len + new_tokens, end_token_ids=tuple(case.get("end_tokens", [tokenizer.eos_id]))
    )
    pixels = image_inputs(model_dir)
    output = generate(
        model,
        text,
        config,
        pixel_values=pixels["pixel_values"],
        cross_pixel_values=pixels.get("cross_pixel_values"),
    )
    return tokenizer, text, output


@pytest.mark.parametrize("item", generation_cases(), ids=lambda item: f"{item[0].name}/{item[1]}")
def test_greedy_continuation_equals_the_reference(item):
    model_dir, name, base, case = item
    require_builder(model_dir)
    tokenizer, text, output = _run(model_dir, base, case)
    assert output.token_ids == case["new_token_ids"]
    assert text.input_ids[0].tolist() + output.token_ids == case["output_ids"]
    if "response_after_official_postprocess" in case:
        version = prompts(model_dir)[base]["version"]
        decoded = tokenizer.decode(case["output_ids"])
        assert decoded == case["decoded_full"]
        assert extract_response(decoded, version) == case["response_after_official_postprocess"]
    if "position_ids_of_generated_tokens" in case:
        assert output.position_ids == case["position_ids_of_generated_tokens"]


@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda d: d.name)
def test_step_logits_and_positions_match_the_reference_kv_cache_loop(model_dir):
    require_builder(model_dir)
    records = generations(model_dir)
    for name, tensors in cases(model_dir).items():
        if "gen_step_logits" not in tensors:
            continue
        _, text, output = _run(model_dir, name, records[name])
        torch.testing.assert_close(output.step_logits, tensors["gen_step_logits"], **STEP_LOGIT_TOLERANCE)
        positions = text.position_ids[0].tolist() + output.position_ids
        assert positions == tensors["gen_full_sequence_position_ids"][0].tolist()


def test_a_prompt_longer_than_max_length_is_refused():
    config = GenerationConfig(max_length=10)
    with pytest.raises(PromptTooLongError, match="the prompt has 12 tokens .* max_length is 10"):
        config.new_token_budget(12)


def test_max_new_tokens_caps_the_budget():
    assert GenerationConfig(max_length=100, max_new_tokens=5).new_token_budget(20) == 5
    assert GenerationConfig(max_length=22).new_token_budget(20) == 2
