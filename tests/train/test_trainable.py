"""Which parameters train: LoRA targets, full fine-tuning, patterns; the report; optimizer groups."""

from __future__ import annotations

import pytest

from cogvlm.checkpoints.loading import load_model
from cogvlm.mixins.lora import LoraConfig, add_lora
from cogvlm.train.config import OptimizerConfig, TrainableConfig
from cogvlm.train.trainable import apply_trainable, parameter_groups, trainable_filter
from tests.golden import golden_dir


def _model():
    model, _ = load_model(golden_dir() / "cogvlm" / "sat_checkpoint")
    return model


def _lora_params(rank: int, in_features: int, out_features: int, parts: int = 1) -> int:
    # parts x (A [rank, in] + B [out / parts, rank])
    return parts * rank * in_features + out_features * rank


def test_the_report_counts_exactly_the_chosen_targets_and_layers():
    model = _model()
    llm, tower = model.config.llm, model.config.vision.transformer
    hidden, width, inner = llm.hidden_size, llm.attention_width, llm.inner_hidden_size
    eva_hidden, eva_width, eva_layers = tower.hidden_size, tower.attention_width, tower.num_layers
    config = LoraConfig(
        rank=4,
        targets=("language_attention", "vision_expert_mlp", "vision_attention"),
        layer_range=(llm.num_layers - 1,),  # the LLM's last layer; every EVA layer
    )
    add_lora(model, config)
    report = apply_trainable(model, trainable_filter(TrainableConfig(), has_lora=True))
    attention = _lora_params(4, hidden, 3 * width, parts=3) + _lora_params(4, width, hidden)
    mlp = 2 * _lora_params(4, hidden, inner) + _lora_params(4, inner, hidden)
    eva_layer = _lora_params(4, eva_hidden, 3 * eva_width, parts=3) + _lora_params(4, eva_width, eva_hidden)
    eva = eva_layers * eva_layer
    assert report.groups == {
        "lora:language_attention": attention,
        "lora:vision_attention": eva,
        "lora:vision_expert_mlp": mlp,
    }
    assert report.lora_modules == {
        "lora:language_attention": 2,
        "lora:vision_attention": 2 * eva_layers,
        "lora:vision_expert_mlp": 3,
    }
    assert report.trainable == attention + mlp + eva
    assert report.total == sum(p.numel() for p in model.parameters())
    assert f"lora:vision_expert_mlp: {mlp:,} in 3 wrapped layers" in report.describe()


def test_freezing_patterns_win_and_train_patterns_add_parameters():
    model = _model()
    add_lora(model, LoraConfig(rank=2))
    rules = TrainableConfig(
        train_patterns=("mixins.eva.linear_proj.*",), freeze_patterns=("mixins.eva.vit_model.*",)
    )
    apply_trainable(model, trainable_filter(rules, has_lora=True))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and not any(name.startswith("mixins.eva.vit_model.") for name in trained)
    assert "mixins.eva.linear_proj.linear_proj.weight" in trained
    assert "transformer.layers.0.attention.query_key_value.matrix_A.0" in trained
    assert "transformer.layers.0.attention.query_key_value.original.weight" not in trained


def test_full_finetuning_trains_everything_and_an_empty_selection_is_an_error():
    model = _model()
    report = apply_trainable(model, trainable_filter(TrainableConfig(full=True), has_lora=False))
    assert report.trainable == report.total
    with pytest.raises(ValueError, match="select no parameter"):
        apply_trainable(
            model, trainable_filter(TrainableConfig(train_patterns=("nothing.*",)), has_lora=False)
        )


def test_optimizer_groups_exempt_biases_and_norms_from_decay_and_apply_lr_scales():
    model = _model()
    apply_trainable(model, trainable_filter(TrainableConfig(full=True), has_lora=False))
    rules = TrainableConfig(full=True, lr_scales=(("mixins.eva.*", 0.1),))
    groups = parameter_groups(model, OptimizerConfig(lr=1e-3, weight_decay=0.05), rules)
    by_name = {name: group for group in groups for name in group["names"]}
    assert by_name["transformer.layers.0.input_layernorm.weight"]["weight_decay"] == 0.0
    assert by_name["mixins.eva.vit_model.transformer.layers.0.attention.dense.bias"]["weight_decay"] == 0.0
    assert by_name["transformer.layers.0.attention.dense.weight"]["weight_decay"] == 0.05
    assert by_name["mixins.eva.linear_proj.linear_proj.weight"]["lr"] == pytest.approx(1e-4)
    assert by_name["mixins.lm.lm_head.weight"]["lr"] == 1e-3
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))
