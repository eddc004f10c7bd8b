"""Loading SAT and HF checkpoints: equivalence of the formats, and strict, clear failures."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from cogvlm.checkpoints.hf_format import save_hf_checkpoint
from cogvlm.checkpoints.loading import load_model, load_model_from_state_dict, read_checkpoint_info
from cogvlm.checkpoints.sat_format import (
    config_from_sat,
    config_to_sat,
    load_sat_weights,
    save_sat_checkpoint,
)
from cogvlm.errors import CheckpointError
from tests.golden import golden_dir, load_json
from tests.golden_models import case_logits, checkpoint_dirs, require_builder


def _state(path):
    return load_sat_weights(path / "1" / "mp_rank_00_model_states.pt")


@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda d: d.name)
def test_sat_directory_and_safetensors_file_give_identical_models(model_dir):
    require_builder(model_dir)
    from_sat, info = load_model(model_dir / "sat_checkpoint")
    flat = load_file(model_dir / "weights.safetensors")
    from_file = load_model_from_state_dict(info.config, flat, str(model_dir / "weights.safetensors"))
    for key, value in from_sat.state_dict().items():
        assert torch.equal(value, from_file.state_dict()[key]), key
    assert torch.equal(case_logits(from_sat, model_dir), case_logits(from_file, model_dir))


def test_deepspeed_training_checkpoint_loads_its_module_weights():
    model_dir = golden_dir() / "cogvlm"
    plain, _ = load_model(model_dir / "sat_checkpoint")
    trained, _ = load_model(model_dir / "sat_checkpoint_deepspeed")
    assert torch.equal(case_logits(plain, model_dir), case_logits(trained, model_dir))


@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda d: d.name)
def test_sat_config_round_trips(model_dir):
    require_builder(model_dir)
    raw = load_json(model_dir / "sat_checkpoint" / "model_config.json")
    info = read_checkpoint_info(model_dir / "sat_checkpoint")
    assert config_to_sat(info.config) == raw
    assert (
        config_from_sat(
            config_to_sat(info.config),
            state_shapes=None
            if not info.config.has_cross_vision
            else {key: tuple(value.shape) for key, value in _state(model_dir / "sat_checkpoint").items()},
        )
        == info.config
    )


@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda d: d.name)
def test_hf_directory_loads_to_the_same_logits(model_dir, tmp_path):
    require_builder(model_dir)
    sat_model, info = load_model(model_dir / "sat_checkpoint")
    save_hf_checkpoint(tmp_path / "hf", info.config, sat_model.state_dict())
    hf_model, hf_info = load_model(tmp_path / "hf")
    assert hf_info.format == "hf"
    assert hf_info.config == info.config
    assert torch.equal(case_logits(hf_model, model_dir), case_logits(sat_model, model_dir))


def test_sharded_hf_directory_with_index_loads(tmp_path):
    model_dir = golden_dir() / "cogvlm"
    sat_model, info = load_model(model_dir / "sat_checkpoint")
    total = sum(t.numel() * t.element_size() for t in sat_model.state_dict().values())
    save_hf_checkpoint(tmp_path / "hf", info.config, sat_model.state_dict(), max_shard_bytes=total // 4)
    shards = sorted(path.name for path in (tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    hf_model, _ = load_model(tmp_path / "hf")
    assert torch.equal(case_logits(hf_model, model_dir), case_logits(sat_model, model_dir))
    (tmp_path / "hf" / shards[1]).unlink()
    with pytest.raises(CheckpointError, match=f"lists shards that are missing.*{shards[1]}"):
        load_model(tmp_path / "hf")


def test_hf_keys_use_the_published_names(tmp_path):
    model_dir = golden_dir() / "cogvlm"
    sat_model, info = load_model(model_dir / "sat_checkpoint")
    save_hf_checkpoint(tmp_path / "hf", info.config, sat_model.state_dict())
    keys = set(load_file(tmp_path / "hf" / "model.safetensors"))
    last, last_vision = info.config.llm.num_layers - 1, info.config.vision.transformer.num_layers - 1
    assert f"model.layers.{last}.self_attn.vision_expert_query_key_value.weight" in keys
    assert "model.layers.0.mlp.language_mlp.up_proj.weight" in keys
    assert f"model.vision.transformer.layers.{last_vision}.mlp.fc2.bias" in keys
    assert "model.vision.patch_embedding.cls_embedding" in keys
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vision_config"]["num_positions"] == info.config.vision.transformer.num_positions
    assert config["architectures"] == ["CogVLMForCausalLM"]


def test_missing_key_is_an_error_naming_it(sat_copy):
    state = _state(sat_copy)
    del state["mixins.lm.lm_head.weight"]
    save_sat_checkpoint(sat_copy, read_checkpoint_info(sat_copy).config, [state])
    with pytest.raises(CheckpointError, match=r"missing keys mixins\.lm\.lm_head\.weight"):
        load_model(sat_copy)


def test_unexpected_key_is_an_error_naming_it(sat_copy):
    state = _state(sat_copy)
    state["mixins.extra.weight"] = torch.zeros(2)
    save_sat_checkpoint(sat_copy, read_checkpoint_info(sat_copy).config, [state])
    with pytest.raises(CheckpointError, match=r"unexpected keys mixins\.extra\.weight"):
        load_model(sat_copy)


def test_lora_keys_are_an_error_that_points_to_merge_lora(sat_copy):
    state = _state(sat_copy)
    key = "transformer.layers.0.attention.query_key_value"
    state[f"{key}.original.weight"] = state.pop(f"{key}.weight")
    state[f"{key}.matrix_A.0"] = torch.zeros(4, state[f"{key}.original.weight"].shape[1])
    save_sat_checkpoint(sat_copy, read_checkpoint_info(sat_copy).config, [state])
    with pytest.raises(CheckpointError, match=r"unexpected keys .*LoRA adapter weights: .*cogvlm merge-lora"):
        load_model(sat_copy)


def test_wrong_shape_is_an_error_naming_key_and_shapes(sat_copy):
    state = _state(sat_copy)
    key = "mixins.mlp.gate_proj.0.weight"
    rows, columns = state[key].shape
    state[key] = torch.zeros(rows + 1, columns)
    save_sat_checkpoint(sat_copy, read_checkpoint_info(sat_copy).config, [state])
    with pytest.raises(
        CheckpointError,
        match=rf"{re.escape(key)} has shape \({rows + 1}, {columns}\), expected \({rows}, {columns}\)",
    ):
        load_model(sat_copy)


def test_integer_tensor_for_a_weight_is_an_error(sat_copy):
    state = _state(sat_copy)
    state["transformer.final_layernorm.weight"] = state["transformer.final_layernorm.weight"].long()
    save_sat_checkpoint(sat_copy, read_checkpoint_info(sat_copy).config, [state])
    with pytest.raises(CheckpointError, match=r"transformer\.final_layernorm\.weight has dtype torch\.int64"):
        load_model(sat_copy)


def test_truncated_weight_file_is_an_error_naming_the_file(sat_copy):
    weights = sat_copy / "1" / "mp_rank_00_model_states.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states\.pt: cannot be read"):
        load_model(sat_copy)


def test_truncated_safetensors_file_is_an_error_naming_the_file(tmp_path):
    model_dir = golden_dir() / "cogvlm"
    sat_model, info = load_model(model_dir / "sat_checkpoint")
    save_hf_checkpoint(tmp_path / "hf", info.config, sat_model.state_dict())
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot be read"):
        load_model(tmp_path / "hf")


def test_missing_latest_file_is_an_error(sat_copy):
    (sat_copy / "latest").unlink()
    with pytest.raises(CheckpointError, match=r"latest: missing"):
        load_model(sat_copy)


def test_bad_latest_contents_is_an_error(sat_copy):
    (sat_copy / "latest").write_text("last week")
    with pytest.raises(CheckpointError, match=r"contains 'last week', expected an iteration number"):
        load_model(sat_copy)


def test_malformed_model_config_is_an_error(sat_copy):
    (sat_copy / "model_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model_config\.json: not valid JSON"):
        load_model(sat_copy)


def test_config_without_a_required_field_is_an_error(sat_copy):
    raw = json.loads((sat_copy / "model_config.json").read_text())
    del raw["hidden_size"]
    (sat_copy / "model_config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"required field 'hidden_size' is missing"):
        load_model(sat_copy)


def test_unsupported_model_class_is_an_error(sat_copy):
    raw = json.loads((sat_copy / "model_config.json").read_text())
    raw["model_class"] = "GLM130B"
    (sat_copy / "model_config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"model_class 'GLM130B' is not supported"):
        load_model(sat_copy)


def test_missing_shard_is_an_error(sat_copy):
    raw = json.loads((sat_copy / "model_config.json").read_text())
    raw["model_parallel_size"] = 2
    (sat_copy / "model_config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"shards are missing.*mp_rank_01_model_states\.pt"):
        load_model(sat_copy)


def test_a_pickle_that_runs_code_is_refused(sat_copy, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"module": {"x": Exploit()}}, sat_copy / "1" / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(sat_copy)
    assert not marker.exists()


def test_not_a_checkpoint_directory_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="neither model_config.json"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_model(tmp_path / "absent")


def test_vision_experts_are_derived_from_language_weights_when_absent(sat_copy):
    state = {k: v for k, v in _state(sat_copy).items() if "vision_" not in k or k.startswith("mixins.eva")}
    save_sat_checkpoint(sat_copy, read_checkpoint_info(sat_copy).config, [state])
    model, _ = load_model(sat_copy)
    last = len(model.transformer.layers) - 1
    layer = model.transformer.layers[last]
    assert torch.equal(
        model.mixins["rotary"].vision_query_key_value_list[last].weight,
        layer.attention.query_key_value.weight,
    )
    assert torch.equal(
        model.mixins["mlp"].vision_gate_proj[last].weight, model.mixins["mlp"].gate_proj[last].weight
    )


def test_failed_save_leaves_the_previous_checkpoint_intact(sat_copy):
    before = _state(sat_copy)
    config = read_checkpoint_info(sat_copy).config
    with pytest.raises(AttributeError):
        save_sat_checkpoint(sat_copy, config, [{"bad": "not a tensor"}])
    after = _state(sat_copy)
    assert sorted(after) == sorted(before)
    assert not [p for p in sat_copy.parent.iterdir() if p.name.startswith(".sat")]


def test_flat_safetensors_with_a_missing_key_is_an_error(tmp_path):
    model_dir = golden_dir() / "cogvlm"
    info = read_checkpoint_info(model_dir / "sat_checkpoint")
    flat = load_file(model_dir / "weights.safetensors")
    flat.pop("mixins.eva.boi")
    save_file(flat, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys mixins\.eva\.boi"):
        load_model_from_state_dict(info.config, load_file(tmp_path / "w.safetensors"), "w.safetensors")
