"""Grouped-query attention and a configurable rotary base in the base transformer (LLaMA-3-style models)."""

from __future__ import annotations

import pytest
import torch

from cogvlm.checkpoints.hf_format import config_from_hf, config_to_hf
from cogvlm.checkpoints.loading import load_model
from cogvlm.checkpoints.sat_format import config_from_sat, config_to_sat, save_sat_checkpoint
from cogvlm.errors import ConfigError
from cogvlm.inference.generate import GenerationConfig, generate
from cogvlm.mixins.lora import LoraConfig, add_lora, merge_lora
from cogvlm.models import mixin_names
from cogvlm.models.builders import build_model
from cogvlm.models.context import ForwardContext
from cogvlm.models.presets import preset
from cogvlm.parallel.sharding import collect_shard_rules, shard_state_dict, unshard_state_dicts
from tests.models.grouped_models import (
    grouped_config,
    sample_inputs,
    sample_pixels,
    sample_text,
    seeded_model,
)
from tests.parallel import torchrun_jobs

# Same weights computed two ways (grouped vs repeated key/value heads): only summation order differs.
EQUIVALENCE_TOLERANCE = dict(atol=1e-5, rtol=0)


def _logits(model, config):
    input_ids, ctx = sample_inputs(config)
    with torch.no_grad():
        return model(input_ids, ctx).logits


def _repeat_key_value_heads(qkv: torch.Tensor, config) -> torch.Tensor:
    """[Q; K; V] of a grouped projection -> the same projection with every K/V head repeated per group."""
    llm = config.llm
    query, key, value = qkv.split([llm.attention_width, llm.key_value_width, llm.key_value_width])
    group = llm.num_attention_heads // llm.num_key_value_heads

    def repeat(part):  # [kv_heads * head_dim, in] -> [heads * head_dim, in]; head h reads kv head h // group
        return (
            part.unflatten(0, (llm.num_key_value_heads, llm.head_dim))
            .repeat_interleave(group, 0)
            .flatten(0, 1)
        )

    return torch.cat([query, repeat(key), repeat(value)])


def test_grouped_attention_equals_attention_with_repeated_key_value_heads():
    config = grouped_config()
    grouped = seeded_model(config)
    full_config = grouped_config(kv_heads=config.llm.num_attention_heads)
    full = build_model(full_config).eval()
    state = grouped.state_dict()
    expert = mixin_names.prefix(mixin_names.EXPERT_ATTENTION) + "vision_query_key_value_list."
    for key, tensor in state.items():
        is_language_qkv = key.startswith("transformer.") and key.endswith("attention.query_key_value.weight")
        if is_language_qkv or key.startswith(expert):
            state[key] = _repeat_key_value_heads(tensor, config)
    full.load_state_dict(state)
    assert grouped.transformer.layers[0].attention.query_key_value.weight.shape[0] == (4 + 2 + 2) * 16
    torch.testing.assert_close(_logits(grouped, config), _logits(full, full_config), **EQUIVALENCE_TOLERANCE)


def test_rotary_base_sets_the_frequencies_and_changes_the_model():
    config = grouped_config(rotary_base=500000.0)
    model = seeded_model(config)
    inv_freq = model.mixins[mixin_names.EXPERT_ATTENTION].rotary_emb.inv_freq
    head_dim = config.llm.head_dim
    assert torch.equal(inv_freq, 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)))
    other = build_model(grouped_config(rotary_base=10000.0)).eval()
    other.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.endswith("inv_freq")}, strict=False
    )
    assert not torch.allclose(_logits(model, config), _logits(other, config), atol=1e-3)


def test_kv_cache_holds_the_key_value_heads_and_generation_equals_recomputation():
    config = grouped_config()
    model = seeded_model(config, seed=3)
    text, pixels = sample_text(config, length=24), sample_pixels(config)
    output = generate(model, text, GenerationConfig(max_length=40, end_token_ids=()), pixel_values=pixels)
    assert model.transformer.layers[0].attention.local_key_value_heads == config.llm.num_key_value_heads
    assert len(output.token_ids) == 40 - text.seq_len
    # Greedy without a cache: the whole sequence again at each step (positions continue by one).
    sequence, positions = text.input_ids, text.position_ids
    for token in output.token_ids:
        extra = sequence.shape[1] - text.seq_len
        ctx = ForwardContext(
            position_ids=positions,
            vision_token_mask=torch.nn.functional.pad(text.vision_expert_mask, (0, extra)),
            image_embed_mask=torch.nn.functional.pad(text.image_embed_mask, (0, extra)),
            pixel_values=pixels,
        )
        with torch.no_grad():
            assert token == int(model(sequence, ctx).logits[0, -1].argmax())
        sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)


def test_grouped_projections_shard_per_part_and_merge_back():
    config = grouped_config()
    model = seeded_model(config)
    rules = collect_shard_rules(model)
    whole = model.state_dict()
    ranks = [shard_state_dict(whole, rules, rank, 2) for rank in range(2)]
    key = "transformer.layers.0.attention.query_key_value.weight"
    query, kv = config.llm.attention_width, config.llm.key_value_width
    expected_rank_1 = torch.cat(
        [
            whole[key][query // 2 : query],
            whole[key][query + kv // 2 : query + kv],
            whole[key][query + kv + kv // 2 :],
        ]
    )
    assert torch.equal(ranks[1][key], expected_rank_1)
    merged = unshard_state_dicts(ranks, rules)
    assert all(torch.equal(merged[k], whole[k]) for k in whole)


def test_lora_on_a_grouped_projection_has_one_pair_per_part_and_merges_exactly():
    config = grouped_config()
    model = seeded_model(config)
    add_lora(model, LoraConfig(rank=2, alpha=4, targets=("language_attention",)))
    layer = model.transformer.layers[0].attention.query_key_value
    assert [tuple(layer.matrix_B[i].shape) for i in range(3)] == [(64, 2), (32, 2), (32, 2)]
    with torch.no_grad():
        for index in range(3):
            layer.matrix_B[index].normal_()
    before = _logits(model, config)
    merge_lora(model)
    torch.testing.assert_close(_logits(model, config), before, **EQUIVALENCE_TOLERANCE)


def test_sat_and_hf_configs_record_grouping_and_rotary_base():
    config = grouped_config()
    raw = config_to_sat(config)
    assert raw["num_multi_query_heads"] == 2 and raw["rotary_base"] == 500000.0
    assert config_from_sat(raw) == config
    hf = config_to_hf(config)
    assert hf["num_multi_query_heads"] == 2 and hf["rope_theta"] == 500000.0
    assert config_from_hf(hf).llm == config.llm
    plain = config_to_sat(preset("tiny-cogvlm"))
    assert "num_multi_query_heads" not in plain and "rotary_base" not in plain


def test_key_value_heads_that_do_not_divide_the_heads_are_refused():
    with pytest.raises(ConfigError, match=r"num_key_value_heads=3 must divide num_attention_heads=4"):
        grouped_config(kv_heads=3)


def test_tensor_parallel_grouped_model_gives_the_single_process_logits(tmp_path):
    config = grouped_config()
    model = seeded_model(config, seed=5)
    checkpoint = save_sat_checkpoint(tmp_path / "gqa", config, [model.state_dict()])
    loaded, _ = load_model(checkpoint)
    expected = _logits(loaded, config)
    result = torchrun_jobs.run(2, "grouped_worker.py", str(checkpoint), str(tmp_path / "logits.pt"))
    assert result.returncode == 0, result.stderr[-3000:]
    # Row-parallel partial sums are added in another order than the single matmul: a few ulps.
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5, rtol=0)
