"""LoRA as a module swap: SAT's key layout, target selection, exact no-op at init, merging, remapping."""

from __future__ import annotations

import pytest
import torch

from cogvlm.checkpoints.loading import load_model
from cogvlm.checkpoints.lora_format import base_keys_to_lora, lora_config_from_sat, lora_config_to_sat
from cogvlm.mixins.lora import (
    LORA_MIXIN_NAME,
    LoraConfig,
    LoraLinear,
    add_lora,
    is_lora_parameter,
    lora_layers,
    lora_target_paths,
    merge_lora,
)
from cogvlm.models.base_model import MixinModel
from cogvlm.models.context import CrossMemory, ForwardContext
from cogvlm.models.presets import preset
from cogvlm.models.transformer import Transformer
from cogvlm.parallel.layers import ColumnParallelLinear, RowParallelLinear
from tests.golden import golden_dir
from tests.golden_models import case_context, case_logits, first_case, golden_model

COGVLM_DIR = golden_dir() / "cogvlm"


def _fresh_model():
    model, _ = load_model(COGVLM_DIR / "sat_checkpoint")
    return model


def _inputs():
    tensors = first_case(COGVLM_DIR)
    return tensors["input_ids"], case_context(COGVLM_DIR, tensors)


def _logits(model) -> torch.Tensor:
    return case_logits(model, COGVLM_DIR)


def _randomise_b(model, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for index in range(layer.parts):
                b = layer.matrix_B[index]
                b.copy_(torch.randn(b.shape, generator=generator) * 0.1)


ALL_COGVLM_TARGETS = (
    "language_attention",
    "vision_expert_attention",
    "language_mlp",
    "vision_expert_mlp",
    "vision_attention",
)


def test_a_fresh_adapter_leaves_the_logits_unchanged_bit_for_bit():
    model = _fresh_model()
    before = _logits(model)
    add_lora(model, LoraConfig(rank=4, alpha=8, targets=ALL_COGVLM_TARGETS))
    # B starts at zero, so the low-rank term adds exact zeros.
    assert torch.equal(_logits(model), before)


def test_wrapped_layers_use_sats_key_layout_with_one_pair_per_fused_part():
    model = _fresh_model()
    llm, eva = model.config.llm, model.config.vision.transformer
    hidden, width, eva_width = llm.hidden_size, llm.attention_width, eva.attention_width
    last, last_vision = llm.num_layers - 1, eva.num_layers - 1
    add_lora(model, LoraConfig(rank=3, targets=("language_attention", "vision_attention")))
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    qkv = "transformer.layers.0.attention.query_key_value"
    assert shapes[f"{qkv}.original.weight"] == (3 * width, hidden)
    assert [shapes[f"{qkv}.matrix_A.{i}"] for i in range(3)] == [(3, hidden)] * 3
    assert [shapes[f"{qkv}.matrix_B.{i}"] for i in range(3)] == [(width, 3)] * 3
    assert f"{qkv}.matrix_A.3" not in shapes
    dense = f"transformer.layers.{last}.attention.dense"
    assert shapes[f"{dense}.matrix_A.0"] == (3, width) and shapes[f"{dense}.matrix_B.0"] == (hidden, 3)
    eva_qkv = f"mixins.eva.vit_model.transformer.layers.{last_vision}.attention.query_key_value"
    assert shapes[f"{eva_qkv}.original.bias"] == (3 * eva_width,)
    assert shapes[f"{eva_qkv}.matrix_B.2"] == (eva_width, 3)
    assert not any(key.startswith("mixins.lora") for key in shapes)


def test_layer_ranges_select_layers_of_each_tower_separately():
    model = _fresh_model()
    last = model.config.llm.num_layers - 1
    config = LoraConfig(
        targets=("language_attention", "vision_attention"), layer_range=(last,), vision_layer_range=(0,)
    )
    paths = lora_target_paths(model, config)
    assert paths["language_attention"] == [
        f"transformer.layers.{last}.attention.query_key_value",
        f"transformer.layers.{last}.attention.dense",
    ]
    assert paths["vision_attention"] == [
        "mixins.eva.vit_model.transformer.layers.0.attention.query_key_value",
        "mixins.eva.vit_model.transformer.layers.0.attention.dense",
    ]


def test_a_layer_range_outside_the_model_is_an_error():
    model = _fresh_model()
    layers = model.config.llm.num_layers
    outside = layers + 3
    match = rf"layer_range \[0, {outside}\] has indices \[{outside}\] outside \[0, {layers}\)"
    with pytest.raises(ValueError, match=match):
        lora_target_paths(model, LoraConfig(layer_range=(0, outside)))


def test_cross_attention_targets_select_nothing_on_cogvlm():
    with pytest.raises(ValueError, match="LoRA target 'cross_attention' selects no module"):
        add_lora(_fresh_model(), LoraConfig(targets=("cross_attention",)))


def test_unknown_targets_and_bad_ranks_are_rejected():
    with pytest.raises(ValueError, match=r"unknown LoRA target\(s\) \['attn'\]"):
        LoraConfig(targets=("attn",))
    with pytest.raises(ValueError, match="rank must be a positive int, got 0"):
        LoraConfig(rank=0)


def _cross_attention_model():
    torch.manual_seed(0)
    llm = preset("tiny-cogagent").llm
    model = MixinModel(Transformer(llm))
    return model, llm


def test_cross_attention_targets_wrap_query_key_value_and_dense_by_module_path():
    model, llm = _cross_attention_model()
    memory = torch.randn(1, 5, llm.cross_attention.encoder_hidden_size)
    ctx = ForwardContext(position_ids=torch.arange(3)[None], cross_memory=CrossMemory(memory))
    with torch.no_grad():
        before = model(torch.zeros(1, 3, dtype=torch.long), ctx).logits
    paths = add_lora(model, LoraConfig(rank=2, targets=("cross_attention",), layer_range=(0,)))
    assert paths == tuple(
        f"transformer.layers.0.cross_attention.{name}" for name in ("query", "key_value", "dense")
    )
    assert [lora_layers(model)[path].parts for path in paths] == [1, 2, 1]
    ctx = ForwardContext(position_ids=torch.arange(3)[None], cross_memory=CrossMemory(memory))
    with torch.no_grad():
        assert torch.equal(model(torch.zeros(1, 3, dtype=torch.long), ctx).logits, before)


def test_cogagent_cross_attention_targets_cover_every_decoder_layer():
    model = golden_model(golden_dir() / "cogagent")
    paths = lora_target_paths(model, LoraConfig(targets=("cross_attention",)))["cross_attention"]
    assert len(paths) == 3 * len(model.transformer.layers)


def test_merging_gives_plain_layers_with_the_adapters_logits():
    model = _fresh_model()
    add_lora(model, LoraConfig(rank=4, alpha=8, targets=ALL_COGVLM_TARGETS))
    _randomise_b(model)
    adapted = _logits(model)
    assert not torch.equal(adapted, _logits(_fresh_model()))
    merged_paths = merge_lora(model)
    assert LORA_MIXIN_NAME not in model.mixins and not lora_layers(model)
    assert type(model.get_submodule(merged_paths[0])) is ColumnParallelLinear
    assert type(model.get_submodule("transformer.layers.0.attention.dense")) is RowParallelLinear
    assert sorted(model.state_dict()) == sorted(_fresh_model().state_dict())
    # W + BA is formed once in float32; x W^T + (x A^T) B^T rounds differently (|logits| < 8).
    torch.testing.assert_close(_logits(model), adapted, atol=1e-5, rtol=0)


def test_the_filter_selects_only_the_low_rank_matrices():
    model = _fresh_model()
    add_lora(model, LoraConfig(rank=2))
    chosen = [name for name, _ in model.named_parameters() if is_lora_parameter(name)]
    assert chosen and all(".matrix_A." in name or ".matrix_B." in name for name in chosen)
    assert not is_lora_parameter("transformer.layers.0.attention.query_key_value.original.weight")


def test_a_base_checkpoint_loads_into_an_adapted_model_through_the_key_remap():
    base = _fresh_model().state_dict()
    model = _fresh_model()
    paths = add_lora(model, LoraConfig(rank=2, targets=ALL_COGVLM_TARGETS))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    remapped = base_keys_to_lora(base, paths)
    result = model.load_state_dict(remapped, strict=False)
    assert not result.unexpected_keys
    assert all(is_lora_parameter(key) for key in result.missing_keys)
    assert torch.equal(model.get_submodule(paths[0]).original.weight, base[f"{paths[0]}.weight"])


def test_lora_fields_round_trip_through_model_config_and_read_the_references():
    config = LoraConfig(rank=6, alpha=3.0, dropout=0.1, targets=("language_mlp",), layer_range=(0,), seed=4)
    assert lora_config_from_sat(lora_config_to_sat(config)) == config
    reference = {"use_lora": True, "lora_rank": 10, "layer_range": [1]}
    assert lora_config_from_sat(reference) == LoraConfig(
        rank=10,
        alpha=1.0,
        targets=("language_attention", "vision_attention"),
        layer_range=(1,),
        vision_layer_range=(1,),
    )
    assert lora_config_from_sat({"use_lora": False}) is None


def test_dropout_acts_in_training_only():
    model = _fresh_model()
    add_lora(model, LoraConfig(rank=4, dropout=0.5, targets=("language_attention",)))
    _randomise_b(model)
    layer = next(iter(lora_layers(model).values()))
    hidden = torch.randn(2, 5, layer.matrix_A[0].shape[1])
    with torch.no_grad():
        layer.eval()
        assert torch.equal(layer(hidden), layer(hidden))
        layer.train()
        assert not torch.equal(layer(hidden), layer(hidden))


def test_initial_values_depend_on_seed_and_path_only():
    first, second = _fresh_model(), _fresh_model()
    torch.manual_seed(1)
    add_lora(first, LoraConfig(rank=2, seed=3))
    torch.manual_seed(2)
    add_lora(second, LoraConfig(rank=2, seed=3))
    for (path, a), (_, b) in zip(lora_layers(first).items(), lora_layers(second).items(), strict=True):
        assert torch.equal(a.matrix_A[0], b.matrix_A[0]), path
    assert isinstance(a, LoraLinear)
