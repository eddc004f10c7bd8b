"""The PEFT export: HF module names, and PEFT's arithmetic on HF weights equals our merged weights."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from cogvlm.checkpoints.hf_format import sat_state_dict_to_hf
from cogvlm.checkpoints.loading import load_model
from cogvlm.checkpoints.lora_format import base_keys_to_lora
from cogvlm.checkpoints.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, save_peft_adapter
from cogvlm.mixins.lora import LoraConfig, add_lora, lora_layers, merge_lora
from tests.golden import golden_dir

TARGETS = (
    "language_attention",
    "vision_expert_attention",
    "language_mlp",
    "vision_expert_mlp",
    "vision_attention",
)
# PEFT's two ways of matching a rank_pattern / alpha_pattern key against a module name (older and newer
# releases); an export must be read the same way by both.
PEFT_MATCHERS = (
    lambda key, name: re.match(rf".*\.{key}$", name),
    lambda key, name: re.match(rf"(.*\.)?({key})$", name),
)


def _adapted_model():
    model, info = load_model(golden_dir() / "cogvlm" / "sat_checkpoint")
    config = LoraConfig(rank=3, alpha=5.0, targets=TARGETS)
    add_lora(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for index in range(layer.parts):
                layer.matrix_B[index].copy_(torch.randn(layer.matrix_B[index].shape, generator=generator))
    return model, info.config, config


def _pattern_value(patterns: dict, default, module: str, matcher):
    return next((value for key, value in patterns.items() if matcher(key, module)), default)


def _apply_peft(base_hf: dict, tensors: dict, adapter: dict, matcher) -> dict:
    """What PEFT's merge does: W += lora_B @ lora_A * lora_alpha / r, per target module."""
    result = dict(base_hf)
    for module in adapter["target_modules"]:
        rank = _pattern_value(adapter["rank_pattern"], adapter["r"], module, matcher)
        alpha = _pattern_value(adapter["alpha_pattern"], adapter["lora_alpha"], module, matcher)
        lora_a = tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"]
        lora_b = tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"]
        assert lora_a.shape[0] == rank and lora_b.shape[1] == rank, module
        result[f"{module}.weight"] = base_hf[f"{module}.weight"] + (lora_b @ lora_a) * (alpha / rank)
    return result


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, model_config, config = _adapted_model()
    directory = save_peft_adapter(tmp_path_factory.mktemp("peft") / "adapter", model, config, "cogvlm-tiny")
    tensors = load_file(directory / ADAPTER_WEIGHTS)
    adapter = json.loads((directory / ADAPTER_CONFIG).read_text())
    base = {key: value.clone() for key, value in model.state_dict().items() if ".matrix_" not in key}
    base = {key.replace(".original.", "."): value for key, value in base.items()}
    merge_lora(model)
    return tensors, adapter, base, model.state_dict(), model_config


def test_adapter_keys_use_hf_cogvlm_module_names(exported):
    tensors, adapter, *_, model_config = exported
    hidden, qkv_width = model_config.llm.hidden_size, 3 * model_config.llm.attention_width
    last, last_vision = model_config.llm.num_layers - 1, model_config.vision.transformer.num_layers - 1
    qkv = "model.layers.0.self_attn.language_expert_query_key_value"
    assert tensors[f"{PEFT_PREFIX}{qkv}.lora_A.weight"].shape == (9, hidden)  # 3 parts x rank 3
    assert tensors[f"{PEFT_PREFIX}{qkv}.lora_B.weight"].shape == (qkv_width, 9)
    assert f"{PEFT_PREFIX}model.vision.transformer.layers.{last_vision}.mlp.fc1.lora_A.weight" not in tensors
    assert f"model.vision.transformer.layers.{last_vision}.attention.dense" in adapter["target_modules"]
    assert f"model.layers.{last}.mlp.vision_mlp.gate_proj" in adapter["target_modules"]
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 3 and adapter["lora_alpha"] == 5.0
    assert adapter["rank_pattern"]["layers.0.self_attn.language_expert_query_key_value"] == 9
    assert adapter["alpha_pattern"]["layers.0.self_attn.language_expert_query_key_value"] == 15.0


@pytest.mark.parametrize("matcher", PEFT_MATCHERS, ids=["peft-old-match", "peft-new-match"])
def test_peft_arithmetic_on_hf_weights_equals_our_merged_weights(exported, matcher):
    tensors, adapter, base, merged, model_config = exported
    layers = model_config.llm.num_layers
    adapted = _apply_peft(sat_state_dict_to_hf(base, layers), tensors, adapter, matcher)
    expected = sat_state_dict_to_hf(merged, layers)
    assert sorted(adapted) == sorted(expected)
    for key, value in expected.items():
        # Same float32 sums in a different association (block-diagonal product vs per-part products).
        torch.testing.assert_close(adapted[key], value, atol=1e-6, rtol=1e-6, msg=key)


def test_each_pattern_key_matches_exactly_one_module(exported):
    _, adapter, *_ = exported
    for key in adapter["rank_pattern"]:
        for matcher in PEFT_MATCHERS:
            assert [module for module in adapter["target_modules"] if matcher(key, module)] != []
            assert len([module for module in adapter["target_modules"] if matcher(key, module)]) == 1


def test_exporting_a_model_without_an_adapter_is_an_error(tmp_path):
    model, _ = load_model(golden_dir() / "cogvlm" / "sat_checkpoint")
    with pytest.raises(ValueError, match="no LoRA layers to export"):
        save_peft_adapter(tmp_path / "adapter", model, LoraConfig())
    assert not (tmp_path / "adapter").exists()


def test_base_keys_to_lora_is_the_inverse_of_dropping_original(exported):
    _, _, base, _, _ = exported
    paths = ["transformer.layers.0.attention.dense"]
    renamed = base_keys_to_lora(base, paths)
    assert "transformer.layers.0.attention.dense.original.weight" in renamed
    assert "transformer.layers.0.attention.dense.weight" not in renamed
