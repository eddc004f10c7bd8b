"""Continuous batching: rows that join a running batch at different steps, and leave it, generate what
each prompt gives alone (the reference continuations, and seeded sampling draw for draw)."""

from __future__ import annotations

import pytest
import torch

from cogvlm.errors import ConfigError, PromptTooLongError
from cogvlm.inference.batching import GenerationRequest
from cogvlm.inference.decode_batch import DecodeBatch
from cogvlm.inference.generate import GenerationConfig, generate
from cogvlm.inference.sampling import SamplingConfig
from cogvlm.text_processors import LlamaTokenizer, build_inference_inputs, build_prompt
from tests.golden import (
    find_case,
    first_appearance_up_to,
    generations,
    greedy_cases,
    max_new_tokens,
    sequence_budget,
)
from tests.golden import prompts as golden_prompts
from tests.golden_models import checkpoint_dirs, end_tokens, golden_model, image_inputs, tokenizer_file

SAMPLED = SamplingConfig(temperature=1.3, top_k=0, top_p=0.9)


def _request(model_dir, prompt: dict) -> GenerationRequest:
    model = golden_model(model_dir)
    tokenizer = LlamaTokenizer.from_file(tokenizer_file())
    text = build_inference_inputs(tokenizer, prompt["prompt"], model.config.image_length)
    images = image_inputs(model_dir)
    return GenerationRequest(text, images["pixel_values"], images.get("cross_pixel_values"))


def _text_only(model_dir, query: str) -> GenerationRequest:
    tokenizer = LlamaTokenizer.from_file(tokenizer_file())
    prompt = build_prompt("chat_old", query, has_image=False)
    text = build_inference_inputs(tokenizer, prompt, golden_model(model_dir).config.image_length)
    return GenerationRequest(text)


def _row_length(model_dir) -> int:
    """Positions a batch row needs for any golden prompt and its reference continuation."""
    return max(sequence_budget(model_dir, name) for name in greedy_cases(model_dir))


def _plain_dir():
    """A golden model without a cross-attention tower (its batches may mix text-only rows)."""
    plain = [d for d in checkpoint_dirs() if "cross_pixel_values" not in image_inputs(d)]
    if not plain:
        pytest.skip("no golden model without a cross tower")
    return plain[0]


def _run(batch: DecodeBatch, arrivals: dict[int, list[tuple[str, GenerationRequest, GenerationConfig]]]):
    """Join each request at its step, step until every row ends; return {name: token ids}."""
    produced: dict[str, list[int]] = {}
    names: dict[int, str] = {}
    step = 0
    while step <= max(arrivals) or batch.size:
        for name, request, config in arrivals.get(step, []):
            first = batch.join(request, config)
            produced[name] = [first.token_id]
            if first.finish_reason is None:
                names[first.row_id] = name
        for result in batch.step():
            produced[names[result.row_id]].append(result.token_id)
        step += 1
    return produced


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda d: d.name)
def test_prompts_joining_at_different_steps_reproduce_every_reference_continuation(model_dir, compiled):
    # "compiled" runs the steps through torch.compile (a real compilation, with growing batch and cache).
    prompts, records, names = golden_prompts(model_dir), generations(model_dir), greedy_cases(model_dir)
    model = golden_model(model_dir)
    batch = DecodeBatch(model, max_rows=len(names), max_length=_row_length(model_dir), compiled=compiled)
    arrivals: dict[int, list] = {}
    for index, name in enumerate(names):
        config = GenerationConfig(
            max_length=model.config.llm.max_sequence_length,
            max_new_tokens=records[name]["max_new_tokens"],
            end_token_ids=end_tokens(),
        )
        # Two prompts share step 0; the others arrive while earlier rows are mid-generation.
        arrivals.setdefault(max(0, 3 * index - 3), []).append(
            (name, _request(model_dir, prompts[name]), config)
        )
    torch._dynamo.utils.counters.clear()
    produced = _run(batch, arrivals)
    for name in names:
        assert produced[name] == records[name]["new_token_ids"], name
    assert batch.size == 0
    # Each compiled step is whole graphs: a break costs a guard check and a trip through Python per step.
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])


def test_seeded_sampling_rows_with_their_own_settings_equal_each_prompt_alone():
    model_dir = _plain_dir()
    model = golden_model(model_dir)
    prompts, names = golden_prompts(model_dir), greedy_cases(model_dir)
    first, second = names[0], names[-1]
    no_end = ()  # each row runs its whole budget, whatever these weights sample
    jobs = [
        (
            "sampled",
            _request(model_dir, prompts[first]),
            GenerationConfig(max_new_tokens=10, end_token_ids=no_end, sampling=SAMPLED, seed=7),
        ),
        (
            "text",
            _text_only(model_dir, "Hello there"),
            GenerationConfig(max_new_tokens=9, end_token_ids=no_end, sampling=SAMPLED, seed=3),
        ),
        (
            "penalised",
            _request(model_dir, prompts[second]),
            GenerationConfig(
                max_new_tokens=8,
                end_token_ids=no_end,
                sampling=SamplingConfig(top_k=1, repetition_penalty=1.8),
            ),
        ),
    ]
    batch = DecodeBatch(model, max_rows=3, max_length=_row_length(model_dir) + 10)
    produced = _run(batch, {0: jobs[:1], 2: jobs[1:2], 4: jobs[2:]})
    for name, request, config in jobs:
        alone = generate(
            model, request.text, config, pixel_values=request.pixel_values, keep_step_logits=False
        )
        assert produced[name] == alone.token_ids, name
        assert len(produced[name]) == config.max_new_tokens


def test_a_row_that_leaves_frees_its_slot_and_the_others_carry_on_unchanged():
    model_dir = checkpoint_dirs()[0]
    model = golden_model(model_dir)
    prompts, records = golden_prompts(model_dir), generations(model_dir)
    names = greedy_cases(model_dir)
    if len(names) < 3:
        pytest.skip(f"{model_dir.name}: needs three golden prompts, the set has {len(names)}")
    names = names[:3]
    if max_new_tokens(model_dir) < 3:
        pytest.skip(f"{model_dir.name}: rows must outlive a step after joining: needs 3 new tokens or more")
    config = GenerationConfig(max_new_tokens=max_new_tokens(model_dir), end_token_ids=end_tokens())
    batch = DecodeBatch(model, max_rows=2, max_length=_row_length(model_dir))
    rows = {}
    for name in names[:2]:
        rows[name] = [batch.join(_request(model_dir, prompts[name]), config)]
    assert not batch.can_join(_request(model_dir, prompts[names[2]]))
    with pytest.raises(ValueError, match="2/2 rows live"):
        batch.join(_request(model_dir, prompts[names[2]]), config)
    by_id = {tokens[0].row_id: name for name, tokens in rows.items()}
    for result in batch.step():
        rows[by_id[result.row_id]].append(result)
    batch.leave(rows[names[0]][0].row_id)  # the first row's client went away; the second moves to slot 0
    assert batch.size == 1
    rows[names[2]] = [batch.join(_request(model_dir, prompts[names[2]]), config)]
    by_id[rows[names[2]][0].row_id] = names[2]
    while batch.size:
        for result in batch.step():
            rows[by_id[result.row_id]].append(result)
    for name in names[1:]:
        assert [r.token_id for r in rows[name]] == records[name]["new_token_ids"], name
        assert rows[name][-1].finish_reason == ("end_token" if records[name]["stopped_on_eos"] else "length")


def test_an_end_token_ends_its_row_and_a_first_token_end_never_takes_a_slot():
    model_dir = checkpoint_dirs()[0]
    model = golden_model(model_dir)
    prompts = golden_prompts(model_dir)
    name = find_case(model_dir, "of two tokens or more", lambda _, g: len(g["new_token_ids"]) > 1)
    expected = generations(model_dir)[name]["new_token_ids"]
    batch = DecodeBatch(model, max_rows=2, max_length=_row_length(model_dir))
    first = batch.join(_request(model_dir, prompts[name]), GenerationConfig(end_token_ids=(expected[0],)))
    assert (first.token_id, first.finish_reason, batch.size) == (expected[0], "end_token", 0)
    stop = first_appearance_up_to(expected, 3)
    if stop == 0:
        pytest.skip(f"{model_dir.name}/{name}: every early token repeats the first; no later end token")
    row = batch.join(_request(model_dir, prompts[name]), GenerationConfig(end_token_ids=(expected[stop],)))
    tokens = [row.token_id] + [batch.step()[0].token_id for _ in range(stop)]
    assert tokens == expected[: stop + 1]
    assert batch.size == 0


def test_settings_the_batch_cannot_honour_are_refused_by_name():
    model_dir = _plain_dir()
    batch = DecodeBatch(golden_model(model_dir), max_rows=1, max_length=256)
    request = _text_only(model_dir, "Hi")
    with pytest.raises(ValueError, match="decode_step='static'"):
        batch.join(request, GenerationConfig(decode_step="static"))
    with pytest.raises(ValueError, match="stop strings \\('x',\\)"):
        batch.join(request, GenerationConfig(stop_strings=("x",)))
    assert batch.size == 0


def test_a_prompt_longer_than_a_row_is_refused_with_the_lengths():
    model_dir = checkpoint_dirs()[0]
    prompt = next(iter(golden_prompts(model_dir).values()))
    request = _request(model_dir, prompt)
    batch = DecodeBatch(golden_model(model_dir), max_rows=1, max_length=request.text.seq_len)
    with pytest.raises(PromptTooLongError, match=f"{request.text.seq_len} tokens"):
        batch.join(request, GenerationConfig())
    assert batch.size == 0


def test_cross_attention_rows_and_rows_without_a_cross_image_never_share_a_batch():
    agent_dirs = [d for d in checkpoint_dirs() if "cross_pixel_values" in image_inputs(d)]
    if not agent_dirs:
        pytest.skip("no golden CogAgent model")
    model_dir = agent_dirs[0]
    prompt = next(iter(golden_prompts(model_dir).values()))
    batch = DecodeBatch(golden_model(model_dir), max_rows=2, max_length=_row_length(model_dir))
    batch.join(_request(model_dir, prompt), GenerationConfig(max_new_tokens=4))
    text_only = _text_only(model_dir, "Hi")
    assert not batch.can_join(text_only)
    with pytest.raises(ValueError, match="cross image"):
        batch.join(text_only, GenerationConfig())
    while batch.size:
        batch.step()
    assert batch.can_join(text_only)


def test_rows_cost_one_forward_per_step_whatever_their_number(monkeypatch):
    model_dir = checkpoint_dirs()[0]
    model = golden_model(model_dir)
    prompts = golden_prompts(model_dir)
    batch = DecodeBatch(model, max_rows=4, max_length=_row_length(model_dir) + 5)
    names = sorted(prompts)[:3]
    for name in names:
        batch.join(_request(model_dir, prompts[name]), GenerationConfig(max_new_tokens=5, end_token_ids=()))
    calls = []
    original = type(model).forward
    monkeypatch.setattr(
        type(model), "forward", lambda self, *a, **k: calls.append(a[0].shape) or original(self, *a, **k)
    )
    results = batch.step()
    assert len(results) == len(names)
    assert calls == [torch.Size([len(names), 1])]


def test_a_cache_too_large_for_memory_is_a_clear_error_naming_rows_and_size():
    model = golden_model(_plain_dir())
    with pytest.raises(
        ConfigError, match=r"KV cache \(34359738368 rows x 1024 positions, .* GiB\).*--max-active"
    ):
        DecodeBatch(model, max_rows=2**35, max_length=1024)


def test_a_warm_up_leaves_the_batch_empty_and_needs_an_empty_one():
    model_dir = _plain_dir()
    batch = DecodeBatch(golden_model(model_dir), max_rows=2, max_length=256)
    request = _text_only(model_dir, "Hi")
    batch.warm_up(request, GenerationConfig(), steps=2)
    assert batch.size == 0
    batch.join(request, GenerationConfig(max_new_tokens=5))
    with pytest.raises(ValueError, match="1 live rows"):
        batch.warm_up(request, GenerationConfig())
