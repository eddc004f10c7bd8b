"""The generation engine on the golden CogVLM: batching, streaming, stopping, budgets and seeded sampling."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cogvlm.inference.batching import GenerationRequest, collate
from cogvlm.inference.generate import (
    GenerationConfig,
    generate,
    generate_batch,
    new_kv_cache,
    stream_generation,
)
from cogvlm.inference.sampling import SamplingConfig
from cogvlm.text_processors import LlamaTokenizer, build_inference_inputs, build_prompt
from tests.golden import (
    find_case,
    first_appearance_up_to,
    golden_dir,
    greedy_cases,
    load_json,
    max_new_tokens,
    stop_string_in,
)
from tests.golden_models import cases, end_tokens, golden_model, image_inputs, tokenizer_file

MODEL_DIR = golden_dir() / "cogvlm"
REPO = Path(__file__).resolve().parents[2]
# Batched rows run their matmuls on other shapes than a single prompt: BLAS blocking noise only.
BATCH_LOGIT_TOLERANCE = dict(atol=1e-4, rtol=0)
SAMPLED = SamplingConfig(temperature=1.5, top_k=0, top_p=1.0, semantics="standard")


@functools.cache
def tokenizer() -> LlamaTokenizer:
    return LlamaTokenizer.from_file(tokenizer_file())


def _golden(case: str) -> tuple[dict, dict]:
    return (
        load_json(MODEL_DIR / "text_inputs.json")[case],
        load_json(MODEL_DIR / "generation.json")[case],
    )


def _request(case: str) -> GenerationRequest:
    prompt, _ = _golden(case)
    model = golden_model(MODEL_DIR)
    text = build_inference_inputs(tokenizer(), prompt["prompt"], model.config.image_length)
    return GenerationRequest(text, image_inputs(MODEL_DIR)["pixel_values"])


def _text_only_request(query: str) -> GenerationRequest:
    prompt = build_prompt("chat_old", query, has_image=False)
    return GenerationRequest(
        build_inference_inputs(tokenizer(), prompt, golden_model(MODEL_DIR).config.image_length)
    )


def _config(**overrides) -> GenerationConfig:
    """The reference runs' budget: as many new tokens as they had, within the model's context."""
    budget = {
        "max_length": golden_model(MODEL_DIR).config.llm.max_sequence_length,
        "end_token_ids": end_tokens(),
    }
    return GenerationConfig(**{**budget, "max_new_tokens": max_new_tokens(MODEL_DIR), **overrides})


def _golden_cases() -> list[str]:
    return greedy_cases(MODEL_DIR)


@pytest.mark.parametrize("decode_step", ["eager", "static", "compiled"])
def test_a_batch_of_every_golden_prompt_reproduces_each_reference_continuation(decode_step):
    # "static" is the CUDA-graph step without the graph: fixed shapes, the whole cache under a mask.
    # "compiled" is the eager step through torch.compile (fused kernels; real compilation here).
    names = _golden_cases()
    if len({_request(name).text.seq_len for name in names}) < 2:
        pytest.skip("every golden prompt has the same length: a batch of them needs no left padding")
    outputs = generate_batch(
        golden_model(MODEL_DIR),
        [_request(name) for name in names],
        _config(decode_step=decode_step),
        keep_step_logits=True,
    )
    for name, output in zip(names, outputs, strict=True):
        _, generation = _golden(name)
        assert output.token_ids == generation["new_token_ids"], name
        assert output.position_ids == generation["position_ids_of_generated_tokens"], name
        torch.testing.assert_close(
            output.step_logits, cases(MODEL_DIR)[name]["gen_step_logits"], **BATCH_LOGIT_TOLERANCE
        )


@pytest.mark.parametrize("decode_step", ["eager", "compiled"])
def test_eager_steps_never_read_the_cache_slots_left_uninitialised(decode_step, monkeypatch):
    # Eager steps skip zeroing the cache: fill those slots with NaN, which any read would spread (0 x NaN).
    from cogvlm.inference import generate as engine

    allocated = []

    def poisoned_cache(*args, zeroed=True, **kwargs):
        cache = new_kv_cache(*args, zeroed=zeroed, **kwargs)
        if not zeroed:
            cache.keys.fill_(float("nan"))
            cache.values.fill_(float("nan"))
        allocated.append(zeroed)
        return cache

    monkeypatch.setattr(engine, "new_kv_cache", poisoned_cache)
    names = _golden_cases()
    requests = [_text_only_request("Hi"), *(_request(name) for name in names)]  # left padding included
    outputs = generate_batch(
        golden_model(MODEL_DIR), requests, _config(decode_step=decode_step), keep_step_logits=True
    )
    assert allocated == [False]
    for name, output in zip(names, outputs[1:], strict=True):
        assert output.token_ids == _golden(name)[1]["new_token_ids"], name
    assert all(torch.isfinite(output.step_logits).all() for output in outputs)


def test_a_mixed_batch_with_text_only_rows_equals_one_by_one_generation():
    model = golden_model(MODEL_DIR)
    requests = [_text_only_request("Hello there"), _request(_golden_cases()[-1]), _text_only_request("Hi")]
    batched = generate_batch(model, requests, _config(), keep_step_logits=True)
    for request, output in zip(requests, batched, strict=True):
        alone = generate_batch(model, [request], _config(), keep_step_logits=True)[0]
        assert output.token_ids == alone.token_ids
        torch.testing.assert_close(output.step_logits, alone.step_logits, **BATCH_LOGIT_TOLERANCE)


def test_left_padding_hides_padding_keys_and_keeps_each_rows_positions():
    batch = collate([_text_only_request("Hi"), _request(_golden_cases()[0])])
    short = batch.lengths[0]
    pad = batch.seq_len - short
    assert batch.input_ids[0, :pad].tolist() == [0] * pad
    assert batch.position_ids[0, pad:].tolist() == list(range(short))
    mask = batch.prefill_attention_mask()  # [batch, 1, seq, seq]
    assert not mask[0, 0, pad:, :pad].any()  # real tokens never see padding
    assert mask[1, 0].equal(torch.ones(batch.seq_len, batch.seq_len, dtype=torch.bool).tril())


def test_a_request_whose_image_slots_and_pixels_disagree_is_refused():
    request = _request(_golden_cases()[0])
    with pytest.raises(
        ValueError, match="request 0: the prompt has 1 image slot block.* pixel_values is missing"
    ):
        collate([GenerationRequest(request.text)])


@pytest.mark.parametrize("case", _golden_cases())
def test_streamed_pieces_add_up_to_the_non_streamed_text(case):
    model, request = golden_model(MODEL_DIR), _request(case)
    config = _config()
    pieces = list(
        stream_generation(model, request.text, config, tokenizer(), pixel_values=request.pixel_values)
    )
    whole = generate(model, request.text, config, pixel_values=request.pixel_values, tokenizer=tokenizer())
    assert "".join(pieces) == whole.text == tokenizer().decode(whole.token_ids, skip_special_tokens=True)
    assert whole.token_ids == _golden(case)[1]["new_token_ids"]


def test_a_stop_string_cuts_the_text_and_ends_generation():
    model, request = golden_model(MODEL_DIR), _request(_golden_cases()[0])
    full = generate(model, request.text, _config(), pixel_values=request.pixel_values, tokenizer=tokenizer())
    stop = stop_string_in(full.text)
    cut = generate(
        model,
        request.text,
        _config(stop_strings=(stop,)),
        pixel_values=request.pixel_values,
        tokenizer=tokenizer(),
    )
    assert cut.stop_reason == "stop_string"
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)] and len(cut.token_ids) < len(full.token_ids)


@pytest.mark.parametrize("case", _golden_cases())
def test_the_static_step_alone_reproduces_the_reference_step_logits(case):
    model, request = golden_model(MODEL_DIR), _request(case)
    output = generate(model, request.text, _config(decode_step="static"), pixel_values=request.pixel_values)
    assert output.token_ids == _golden(case)[1]["new_token_ids"]
    torch.testing.assert_close(
        output.step_logits, cases(MODEL_DIR)[case]["gen_step_logits"], **BATCH_LOGIT_TOLERANCE
    )


def test_cuda_graphs_need_a_cuda_model():
    request = _request(_golden_cases()[0])
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device, not cpu"):
        generate(
            golden_model(MODEL_DIR),
            request.text,
            _config(decode_step="cuda_graph"),
            pixel_values=request.pixel_values,
        )


def test_stop_strings_without_a_tokenizer_are_refused():
    request = _request(_golden_cases()[0])
    with pytest.raises(ValueError, match="stop strings .* need a tokenizer"):
        generate(
            golden_model(MODEL_DIR),
            request.text,
            _config(stop_strings=("x",)),
            pixel_values=request.pixel_values,
        )


def test_max_new_tokens_and_max_length_bound_the_continuation():
    case = find_case(
        MODEL_DIR, "of two tokens or more", lambda _, generation: len(generation["new_token_ids"]) > 1
    )
    model, request, golden_ids = golden_model(MODEL_DIR), _request(case), _golden(case)[1]["new_token_ids"]
    fewer, most = len(golden_ids) // 2, len(golden_ids) - 1  # both stop before the reference run's end
    length = request.text.seq_len
    by_count = generate(model, request.text, _config(max_new_tokens=fewer), pixel_values=request.pixel_values)
    by_length = generate(
        model,
        request.text,
        GenerationConfig(max_length=length + most, end_token_ids=end_tokens()),
        pixel_values=request.pixel_values,
    )
    assert len(by_count.token_ids) == fewer and by_count.stop_reason == "length"
    assert len(by_length.token_ids) == most
    assert by_length.token_ids == golden_ids[:most]


def test_rows_of_a_batch_stop_on_their_own_end_token():
    model, (first, other) = golden_model(MODEL_DIR), (_golden_cases()[0], _golden_cases()[-1])
    first_ids = _golden(first)[1]["new_token_ids"]
    stop = first_appearance_up_to(first_ids, 3)
    config = _config(end_token_ids=(tokenizer().eos_id, first_ids[stop]))
    outputs = generate_batch(model, [_request(first), _request(other)], config)
    assert outputs[0].token_ids == first_ids[: stop + 1] and outputs[0].stop_reason == "end_token"
    expected_other = generate(model, _request(other).text, config, pixel_values=_request(other).pixel_values)
    assert outputs[1].token_ids == expected_other.token_ids


def test_a_seed_makes_sampling_reproducible_and_batched_rows_sample_as_alone():
    model = golden_model(MODEL_DIR)
    requests = [_request(_golden_cases()[0]), _request(_golden_cases()[-1])]
    config = _config(sampling=SAMPLED, seed=1234)
    batched = generate_batch(model, requests, config)
    for request, output in zip(requests, batched, strict=True):
        assert output.token_ids == generate_batch(model, [request], config)[0].token_ids
    other_seed = generate_batch(model, requests[:1], _config(sampling=SAMPLED, seed=99))[0]
    assert other_seed.token_ids != batched[0].token_ids
    assert batched[0].token_ids != _golden(_golden_cases()[0])[1]["new_token_ids"]  # it really sampled


def test_a_strong_standard_repetition_penalty_prevents_repeats():
    case = find_case(
        MODEL_DIR,
        "whose continuation repeats a token",
        lambda _, g: len(set(g["new_token_ids"])) < len(g["new_token_ids"]),
    )
    model, request = golden_model(MODEL_DIR), _request(case)
    sampling = SamplingConfig(top_k=1, repetition_penalty=1e6, semantics="standard")
    output = generate(model, request.text, _config(sampling=sampling), pixel_values=request.pixel_values)
    assert len(set(output.token_ids)) == len(output.token_ids)


NO_COMPILER_SCRIPT = """
import torch
torch._inductor.config.cpp.cxx = ("/nonexistent/g++",)
from cogvlm.inference.generate import GenerationConfig, generate
from tests.inference.test_engine import _text_only_request, golden_model, MODEL_DIR
request = _text_only_request("Hi")
generate(golden_model(MODEL_DIR), request.text, GenerationConfig(max_new_tokens=3, decode_step="compiled"))
"""


def test_the_compiled_step_without_a_compiler_says_what_is_missing_and_what_to_use(tmp_path):
    # A fresh inductor cache, so that nothing compiled earlier is reused instead of compiling.
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path), PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", NO_COMPILER_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode != 0
    assert "RuntimeError: the compiled decoding step could not be built" in result.stderr
    assert "C++ compiler such as g++" in result.stderr and "--decode_step eager" in result.stderr
