"""Checkpoint configs are read field by field: a wrong type or an absurd size is an error naming the field."""

from __future__ import annotations

import copy

import pytest

from cogvlm.checkpoints.hf_format import config_from_hf, config_to_hf
from cogvlm.checkpoints.sat_format import config_from_sat, config_to_sat
from cogvlm.errors import CheckpointError
from cogvlm.models.builders import FAMILIES, model_family
from cogvlm.models.presets import preset

SAT = config_to_sat(preset("tiny-cogvlm"))
SAT_AGENT = config_to_sat(preset("tiny-cogagent"))
HF = config_to_hf(preset("tiny-cogvlm"))


def _with(raw: dict, path: str, value) -> dict:
    changed = copy.deepcopy(raw)
    *parents, name = path.split(".")
    target = changed
    for parent in parents:
        target = target[parent]
    target[name] = value
    return changed


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("num_layers", 10**9, r"field 'num_layers' is 1000000000, expected 1 to 1024"),
        ("num_layers", "32", r"field 'num_layers' is '32', expected an integer"),
        ("num_layers", True, r"field 'num_layers' is True, expected an integer"),
        ("vocab_size", 10**12, r"field 'vocab_size' is 1000000000000, expected 1 to"),
        ("max_sequence_length", 10**12, r"field 'max_sequence_length' is 1000000000000"),
        ("model_parallel_size", 0, r"field 'model_parallel_size' is 0, expected 1 to"),
        ("model_parallel_size", 10**9, r"field 'model_parallel_size' is 1000000000"),
        ("eva_args", None, r"field 'eva_args' is None, expected an object"),
        ("eva_args.num_layers", 10**9, r"field 'eva_args.num_layers' is 1000000000"),
        ("eva_args.patch_size", 0, r"field 'eva_args.patch_size' is 0, expected 1 to"),
        ("eva_args.image_size", [56, 57], r"field 'eva_args.image_size' is \[56, 57\], expected a square"),
        ("model_class", ["CogVLMModel"], r"field 'model_class' is \['CogVLMModel'\], expected a string"),
        ("num_multi_query_heads", 3, r"num_key_value_heads=3 must divide num_attention_heads=4"),
    ],
)
def test_a_bad_sat_field_is_an_error_naming_it(path, value, message):
    with pytest.raises(CheckpointError, match=message):
        config_from_sat(_with(SAT, path, value), source="ckpt/model_config.json")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("is_decoder", [1, 1], r"field 'is_decoder' must be a list of 2 booleans"),
        ("cross_image_pix", -1, r"field 'cross_image_pix' is -1, expected 1 to"),
        ("cross_vision_args", {"width": 32, "depth": 3}, r"field 'cross_vision_args.depth' is not one of"),
    ],
)
def test_a_bad_cross_attention_field_is_an_error_naming_it(path, value, message):
    with pytest.raises(CheckpointError, match=message):
        config_from_sat(_with(SAT_AGENT, path, value))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("vision_config", None, r"field 'vision_config' is None, expected an object"),
        ("vision_config.num_hidden_layers", 10**9, r"field 'vision_config.num_hidden_layers' is 1000000000"),
        ("num_attention_heads", 0, r"field 'num_attention_heads' is 0, expected 1 to"),
        ("template_version", 3, r"field 'template_version' is 3, expected a string"),
        ("rope_theta", float("nan"), r"field 'rope_theta' is nan, expected a number"),
    ],
)
def test_a_bad_hf_field_is_an_error_naming_it(path, value, message):
    with pytest.raises(CheckpointError, match=message):
        config_from_hf(_with(HF, path, value), source="hf/config.json")


def test_a_config_that_is_not_an_object_is_an_error():
    with pytest.raises(CheckpointError, match=r"expected an object, found list"):
        config_from_sat([SAT])


def test_families_translate_their_prompt_names_both_ways():
    cogvlm = model_family("CogVLMModel")
    assert cogvlm.version_from_hf("chat") == "chat_old" and cogvlm.version_to_hf("chat_old") == "chat"
    assert cogvlm.version_from_hf("base") == "base" and cogvlm.version_from_hf(None) is None
    cogagent = model_family("CogAgentModel")
    assert cogagent.version_from_hf("chat") == "chat"
    assert config_from_hf(HF).model_class == "CogVLMModel"
    assert config_from_hf(config_to_hf(preset("tiny-cogagent"))).model_class == "CogAgentModel"
    assert sorted(FAMILIES) == ["CogAgentModel", "CogVLMModel"]
