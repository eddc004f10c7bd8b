"""`cogvlm bench` runs the reference's protocol on a named config and prints its figures as JSON."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cogvlm.frontends.bench import ROUNDS, BenchConfig, bench_config_names, model_config
from cogvlm.models.presets import preset
from cogvlm.text_processors import LlamaTokenizer, build_inference_inputs, build_prompt
from tests.golden import golden_dir

IMAGE, TOKENIZER = golden_dir() / "test_image.png", golden_dir() / "tokenizer.model"


def test_the_reference_bench_configs_parse_into_the_shapes_they_describe():
    assert bench_config_names()[:3] == ("tiny", "small-cogvlm", "small-cogagent")
    tiny, seed = model_config("tiny")
    assert seed == 20240601
    # The tiny bench config has the shapes of the tiny-cogvlm preset (those of the shared golden CogVLM).
    assert tiny == preset("tiny-cogvlm")
    small, _ = model_config("small-cogvlm")
    assert (small.llm.hidden_size, small.llm.num_layers, small.llm.inner_hidden_size) == (512, 8, 1408)
    assert (small.vision.image_px, small.vision.transformer.hidden_size) == (224, 256)
    agent, _ = model_config("small-cogagent")
    assert (agent.cross_vision.image_px, agent.cross_vision.width, agent.cross_vision.num_blocks) == (
        448,
        128,
        4,
    )


def test_bench_prints_the_figures_of_the_tiny_config_as_json():
    command = [sys.executable, "-m", "cogvlm.cli", "bench", "tiny", "--repeats", "3", "--new_tokens", "8"]
    command += ["--image", str(IMAGE), "--tokenizer", str(TOKENIZER)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["config"] == "tiny" and figures["dtype"] == "float32" and figures["threads"] == 2
    # The protocol's chat_old prompt with one image, in the tokenizer given.
    tiny, _ = model_config("tiny")
    prompt = build_prompt("chat_old", "What colors are in the image?")
    tokenizer = LlamaTokenizer.from_file(TOKENIZER)
    assert figures["prefill_tokens"] == build_inference_inputs(tokenizer, prompt, tiny.image_length).seq_len
    from cogvlm.models.builders import build_model

    parameters = sum(p.numel() for p in build_model(tiny, device="meta").parameters())
    assert figures["parameters"] == parameters and figures["weight_bytes"] >= 4 * parameters
    for name in (
        "image_encoding_ms",
        "prefill_ms",
        "decode_ms_per_token_batch_1",
        "bare_linears_ms_per_token",
        "prefill_linears_ms",
        "prefill_attention_ms",
    ):
        assert figures[name] > 0, name
    # The first token's ratios are taken within a round (figures back to back, under one load); a repeat
    # reports the median of its rounds' figures and ratios, the result the median of the repeats'.
    repeats = figures["per_repeat"]
    assert len(repeats) == 3
    for repeat in repeats:
        rounds = repeat["rounds"]
        assert len(rounds) == ROUNDS
        for one in rounds:
            floor = one["image_encoding_ms"] + one["prefill_linears_ms"]
            assert one["first_token_over_encoding_plus_prefill_linears"] == pytest.approx(
                one["first_token_ms"] / floor
            )
            assert one["first_token_over_encoding_plus_prefill_linears_and_attention"] == pytest.approx(
                one["first_token_ms"] / (floor + one["prefill_attention_ms"])
            )
        for name in rounds[0]:
            assert repeat[name] == statistics.median(one[name] for one in rounds), name
        ratio = repeat["decode_ms_per_token_batch_1"] / repeat["bare_linears_ms_per_token"]
        assert repeat["decode_over_bare_linears"] == pytest.approx(ratio)
    for name in repeats[0]:
        if name != "rounds":
            assert figures[name] == statistics.median(repeat[name] for repeat in repeats), name
    # The batch-1 protocol's peak (the reference's) is taken before the batch-N run, which only adds.
    assert 4 * parameters <= figures["peak_rss_bytes_batch_1"] <= figures["peak_rss_bytes"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "huge"}, "unknown bench config 'huge'; known: tiny, small-cogvlm"),
        ({"name": "cogvlm-17b-490"}, "is full size: run it with --device cuda"),
        ({"new_tokens": 1}, "new_tokens must be >= 2"),
        ({"dtype": "int3"}, "dtype 'int3' is not one of"),
    ],
)
def test_bad_bench_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**{"name": "tiny", "image": Path(IMAGE), "tokenizer": Path(TOKENIZER), **changes})


def test_compare_quant_measures_unquantized_int8_and_int4_in_one_run_with_their_ratios():
    command = [sys.executable, "-m", "cogvlm.cli", "bench", "tiny", "--compare_quant", "--repeats", "1"]
    command += [
        "--new_tokens",
        "4",
        "--decode_step",
        "eager",
        "--image",
        str(IMAGE),
        "--tokenizer",
        str(TOKENIZER),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    runs, comparison = output["runs"], output["comparison"]
    assert [run["quant_bits"] for run in runs] == [None, 8, 4]
    assert runs[0]["weight_bytes"] > runs[1]["weight_bytes"] > runs[2]["weight_bytes"]
    for run in runs:  # each run keeps the single-run figures
        assert run["config"] == "tiny" and run["decode_ms_per_token_batch_1"] > 0
        assert run["decode_tokens_per_s_batch_n"] > 0 and "batch_decode_ms" not in run
    for label, run in zip(["float32", "int8", "int4"], runs, strict=True):
        assert comparison[f"decode_ms_per_token_batch_1_{label}"] == run["decode_ms_per_token_batch_1"]
    # One repeat: each ratio is that repeat's unquantized figure over the quantized one.
    for label, run in (("int8", runs[1]), ("int4", runs[2])):
        for figure in ("decode_ms_per_token_batch_1", "prefill_ms"):
            ratio = runs[0][figure] / run[figure]
            assert comparison[f"{figure}_float32_over_{label}"] == pytest.approx(ratio)


def test_compare_quant_with_a_quant_flag_is_refused():
    command = [sys.executable, "-m", "cogvlm.cli", "bench", "tiny", "--compare_quant", "--quant", "8"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--compare_quant measures unquantized, int8 and int4 itself: drop --quant" in result.stderr


def _random_model_and_protocol_request(name: str):
    """A preset's model with the bench's seeded random weights, and the protocol's one-image request."""
    from cogvlm.checkpoints.loading import reset_computed_buffers
    from cogvlm.frontends.bench import _requests, init_random_weights
    from cogvlm.models.builders import build_model

    model = build_model(preset(name), device="meta").to_empty(device="cpu")
    reset_computed_buffers(model)
    init_random_weights(model, seed=0)
    config = BenchConfig(name="tiny", image=IMAGE, tokenizer=TOKENIZER)
    protocol = {"version": "chat_old", "query": "What colors are in the image?", "history": []}
    return model, _requests(model.eval(), config, protocol, 1)[0]


@pytest.mark.parametrize("name", ["tiny-cogvlm", "tiny-cogagent"])
def test_the_prefill_floor_multiplies_what_the_real_prefill_multiplies(name):
    """Every LLM linear of a real prompt pass, with the rows it received, is in the floor's work list."""
    from cogvlm.frontends.bench import _prefill_linear_tokens, _prefill_pass
    from cogvlm.inference.generate import GenerationConfig, generate_batch

    model, request = _random_model_and_protocol_request(name)
    expected = {id(module): tokens for module, tokens in _prefill_linear_tokens(model, request)}
    seen: dict[int, int] = {}
    hooks = [
        module.register_forward_hook(
            lambda m, args, out: seen.__setitem__(id(m), seen.get(id(m), 0) + args[0].shape[-2])
        )
        for module in model.modules()
        if id(module) in expected
    ]
    generate_batch(model, [request], GenerationConfig(max_new_tokens=1))  # the prefill only
    assert seen == expected
    # The bench's timed prompt pass (`prefill_ms`) runs the same linears on the same rows, CogAgent's
    # cross-attention included.
    seen.clear()
    with torch.inference_mode():
        _prefill_pass(model, request, torch.device("cpu"))()
    for hook in hooks:
        hook.remove()
    assert seen == expected


@pytest.mark.parametrize("name", ["tiny-cogvlm", "tiny-cogagent"])
def test_the_prefill_attention_figure_times_the_attention_of_the_real_prefill(name, monkeypatch):
    """The shapes `prefill_attention_ms` times are exactly the timed pass's attention calls, and those of a
    real prefill once the towers' own are left out."""
    import torch.nn.functional as F

    from cogvlm.frontends.bench import _prefill_pass, prefill_attention_work
    from cogvlm.inference.generate import GenerationConfig, generate_batch

    model, request = _random_model_and_protocol_request(name)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording(query, key, value, *args, **kwargs):
        calls.append((tuple(query.shape), tuple(key.shape), kwargs.get("is_causal", False)))
        return sdpa(query, key, value, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    expected = prefill_attention_work(model, request)
    timed_pass = _prefill_pass(model, request, torch.device("cpu"))  # encodes CogAgent's cross image
    calls.clear()
    with torch.inference_mode():
        timed_pass()
    assert calls == expected
    assert sum(causal for _, _, causal in expected) == model.config.llm.num_layers
    assert len(expected) > model.config.llm.num_layers or not model.config.has_cross_vision
    calls.clear()
    generate_batch(model, [request], GenerationConfig(max_new_tokens=1))  # the prefill only
    assert calls[-len(expected) :] == expected  # the towers run first, then the LLM's layers


def test_bench_without_a_golden_set_uses_the_embedded_tokenizer_and_image(tmp_path):
    from cogvlm.embedded import embedded_checkpoint, example_image

    env = {**os.environ, "COGVLM_GOLDEN": str(tmp_path / "empty"), "PYTHONPATH": str(Path.cwd())}
    command = [sys.executable, "-m", "cogvlm.cli", "bench", "tiny", "--repeats", "1", "--new_tokens", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    tokenizer = embedded_checkpoint() / "tokenizer.model"
    assert (figures["tokenizer"], figures["image"]) == (str(tokenizer), str(example_image()))
    tiny, _ = model_config("tiny")
    prompt = build_prompt("chat_old", "What colors are in the image?")
    expected = build_inference_inputs(LlamaTokenizer.from_file(tokenizer), prompt, tiny.image_length).seq_len
    assert figures["prefill_tokens"] == expected and figures["decode_ms_per_token_batch_1"] > 0


def test_a_first_token_sample_stops_the_generation_after_its_first_step(monkeypatch):
    from cogvlm.frontends import bench

    pulled = []

    def counting_steps(model, requests, config):
        for step in range(64):
            pulled.append(step)
            yield type("Step", (), {"tokens": torch.tensor([step])})()

    monkeypatch.setattr(bench, "iterate_batch", counting_steps)
    bench._first_token(None, [], None)
    assert pulled == [0]
