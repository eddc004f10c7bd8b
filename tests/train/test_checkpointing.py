"""Fine-tuned checkpoints: LoRA fields in model_config.json, loading at any model-parallel size,
reference-written LoRA checkpoints, the `latest` pointer and stale staging folders."""

from __future__ import annotations

import pytest
import torch

from cogvlm.checkpoints.loading import load_model, read_checkpoint_info
from cogvlm.checkpoints.sat_format import save_sat_checkpoint
from cogvlm.mixins.lora import LoraConfig, add_lora, lora_layers
from cogvlm.parallel.sharding import collect_shard_rules, shard_state_dict
from cogvlm.train.checkpointing import (
    config_with_lora,
    latest_iteration,
    load_finetuned_model,
    remove_stale_staging,
)
from tests.golden import golden_dir


def _lora_model(config: LoraConfig):
    model, info = load_model(golden_dir() / "cogvlm" / "sat_checkpoint")
    add_lora(model, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for index in range(layer.parts):
                layer.matrix_B[index].copy_(torch.randn(layer.matrix_B[index].shape, generator=generator))
    return model, info.config


def test_a_saved_lora_checkpoint_loads_back_with_its_adapter(tmp_path):
    lora = LoraConfig(
        rank=3, alpha=2.0, targets=("language_attention", "vision_expert_mlp"), layer_range=(0,)
    )
    model, config = _lora_model(lora)
    save_sat_checkpoint(tmp_path / "ck", config_with_lora(config, lora, "chat"), [model.state_dict()])
    loaded, info, loaded_lora = load_finetuned_model(tmp_path / "ck")
    assert loaded_lora == lora and info.config.text_processor_version == "chat"
    state = loaded.state_dict()
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())


def test_a_two_way_sharded_lora_checkpoint_merges_to_one_rank(tmp_path):
    lora = LoraConfig(rank=2, targets=("language_attention", "language_mlp"))
    model, config = _lora_model(lora)
    whole = model.state_dict()
    rules = collect_shard_rules(model)
    assert rules["transformer.layers.0.attention.query_key_value.matrix_B.1"].dim == 0
    assert rules["transformer.layers.0.attention.dense.matrix_A.0"].dim == 1
    assert rules["transformer.layers.0.attention.query_key_value.matrix_A.0"].is_replicated
    shards = [shard_state_dict(whole, rules, rank, 2) for rank in range(2)]
    save_sat_checkpoint(tmp_path / "mp2", config_with_lora(config, lora), shards)
    loaded, info, _ = load_finetuned_model(tmp_path / "mp2")
    assert info.model_parallel_size == 2
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in whole.items())


def test_a_checkpoint_written_by_the_reference_finetuning_loads_with_its_adapter(tmp_path):
    # The reference records only use_lora / lora_rank / layer_range (alpha 1, language + EVA attention).
    golden = read_checkpoint_info(golden_dir() / "cogvlm" / "sat_checkpoint").config
    last = min(golden.llm.num_layers, golden.vision.transformer.num_layers) - 1  # in both towers
    reference_lora = LoraConfig(rank=4, alpha=1.0, layer_range=(last,), vision_layer_range=(last,))
    model, config = _lora_model(reference_lora)
    extra = {**config.extra, "use_lora": True, "lora_rank": 4, "layer_range": [last]}
    save_sat_checkpoint(
        tmp_path / "ref", config.__class__(**{**config.__dict__, "extra": extra}), [model.state_dict()]
    )
    loaded, _, lora = load_finetuned_model(tmp_path / "ref")
    assert lora == reference_lora
    key = f"transformer.layers.{last}.attention.dense.matrix_B.0"
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key])


def test_a_plain_checkpoint_loads_without_an_adapter():
    model, _, lora = load_finetuned_model(golden_dir() / "cogvlm" / "sat_checkpoint")
    assert lora is None and not lora_layers(model)


def test_latest_names_the_iteration_to_resume_from(tmp_path):
    assert latest_iteration(tmp_path) is None
    (tmp_path / "latest").write_text("400")
    assert latest_iteration(tmp_path) == 400
    (tmp_path / "latest").write_text("release")
    with pytest.raises(ValueError, match="names 'release', not a training iteration"):
        latest_iteration(tmp_path)


def test_stale_staging_folders_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / ".8.tmp-abc").mkdir()
    (tmp_path / "4").mkdir()
    assert remove_stale_staging(tmp_path) == [tmp_path / ".8.tmp-abc"]
    assert [p.name for p in tmp_path.iterdir()] == ["4"]
