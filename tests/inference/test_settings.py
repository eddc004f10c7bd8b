"""Generation settings: a checkpoint's defaults under a caller's choices, built in one place."""

from __future__ import annotations

import json

import pytest

from cogvlm.api import load
from cogvlm.inference.settings import (
    REFERENCE_SAMPLING,
    GenerationDefaults,
    GenerationSettings,
    build_generation_config,
)
from tests.golden import golden_dir
from tests.golden_models import tokenizer_file

DEFAULTS = GenerationDefaults(context_length=256, end_token_ids=(7,))


def test_without_choices_the_defaults_are_the_reference_clis_greedy_settings():
    config = build_generation_config(DEFAULTS, GenerationSettings())
    assert config.max_length == 256 and config.max_new_tokens is None
    assert config.end_token_ids == (7,)
    assert config.sampling == REFERENCE_SAMPLING and config.sampling.is_greedy


def test_each_choice_replaces_only_its_field():
    settings = GenerationSettings(max_new_tokens=5, temperature=0.3, top_k=40, seed=1, stop_strings=("x",))
    config = build_generation_config(DEFAULTS, settings)
    assert (config.max_new_tokens, config.seed, config.stop_strings) == (5, 1, ("x",))
    assert (config.sampling.temperature, config.sampling.top_k) == (0.3, 40)
    assert config.sampling.top_p == REFERENCE_SAMPLING.top_p  # not chosen: the default
    assert config.end_token_ids == (7,)


def test_max_length_is_capped_at_the_models_context():
    assert build_generation_config(DEFAULTS, GenerationSettings(max_length=2048)).max_length == 256
    assert build_generation_config(DEFAULTS, GenerationSettings(max_length=100)).max_length == 100


def test_an_hf_generation_config_sets_the_checkpoints_defaults():
    sampled = GenerationDefaults.from_hf_generation_config(
        {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 5, "max_new_tokens": 40}, 512, (2,)
    )
    assert (sampled.sampling.temperature, sampled.sampling.top_p, sampled.sampling.top_k) == (0.6, 0.9, 5)
    assert sampled.sampling.semantics == "standard" and sampled.max_new_tokens == 40
    greedy = GenerationDefaults.from_hf_generation_config({"max_length": 9999}, 512, (2,))
    assert greedy.sampling.is_greedy and greedy.context_length == 512


def test_a_loaded_session_builds_configs_from_its_checkpoint_and_tokenizer(tmp_path):
    source = golden_dir() / "cogvlm" / "sat_checkpoint"
    session = load(source, local_tokenizer=str(tokenizer_file()))
    config = session.generation_config(max_new_tokens=3)
    assert config.end_token_ids == (session.tokenizer.eos_id,)
    assert config.max_length == session.config.llm.max_sequence_length and config.max_new_tokens == 3
    checkpoint = tmp_path / "with_defaults"
    checkpoint.mkdir()
    for item in source.rglob("*"):
        if item.is_file():
            (checkpoint / item.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (checkpoint / item.relative_to(source)).write_bytes(item.read_bytes())
    (checkpoint / "generation_config.json").write_text(json.dumps({"max_new_tokens": 6}))
    with_defaults = load(checkpoint, local_tokenizer=str(tokenizer_file()))
    assert with_defaults.generation_config().max_new_tokens == 6
    assert with_defaults.generation_config(max_new_tokens=2).max_new_tokens == 2


def test_a_choice_outside_the_samplers_range_is_refused():
    with pytest.raises(ValueError, match="top_p must be in"):
        build_generation_config(DEFAULTS, GenerationSettings(top_p=1.5))
