"""The streaming loader's plan for the published 17B/18B checkpoints, on the meta device (no real memory).

A fake state dict holds a meta tensor for every key of CogVLM-17B (`cogvlm-chat-v1.1`) and CogAgent-18B
(`cogagent-chat`) with the published SAT names and shapes (the reference SPEC's key table, written out
here independently of the model code); it goes through the planning of a load for MP=1 and MP=2 sources,
one and two ranks, unquantized and int8/int4: every key consumed, every piece and quantized shape right.
"""

from __future__ import annotations

import pytest
import torch

from cogvlm.checkpoints.loading import plan_model_load
from cogvlm.checkpoints.streaming import CheckpointTensors
from cogvlm.models.presets import preset
from cogvlm.nn.quantized import QuantConfig, is_quantized
from cogvlm.parallel.groups import TensorParallel
from cogvlm.parallel.sharding import shard_tensor

HIDDEN, INNER, VOCAB, LAYERS = 4096, 11008, 32000, 32
EVA_WIDTH, EVA_INNER, EVA_LAYERS = 1792, 15360, 63
CROSS_WIDTH, CROSS_INNER, CROSS_BLOCKS = 1024, 2730, 24
BF16 = torch.bfloat16


def _llm_keys() -> dict[str, tuple[int, ...]]:
    keys = {
        "transformer.word_embeddings.weight": (VOCAB, HIDDEN),
        "transformer.final_layernorm.weight": (HIDDEN,),
        "mixins.lm.lm_head.weight": (VOCAB, HIDDEN),
        "mixins.rotary.rotary_emb.inv_freq": (64,),
    }
    for i in range(LAYERS):
        layer = f"transformer.layers.{i}."
        keys[layer + "input_layernorm.weight"] = (HIDDEN,)
        keys[layer + "attention.query_key_value.weight"] = (3 * HIDDEN, HIDDEN)
        keys[layer + "attention.dense.weight"] = (HIDDEN, HIDDEN)
        keys[layer + "post_attention_layernorm.weight"] = (HIDDEN,)
        keys[layer + "mlp.dense_h_to_4h.weight"] = (INNER, HIDDEN)
        keys[layer + "mlp.dense_4h_to_h.weight"] = (HIDDEN, INNER)
        keys[f"mixins.mlp.gate_proj.{i}.weight"] = (INNER, HIDDEN)
        keys[f"mixins.mlp.vision_dense_h_to_4h_list.{i}.weight"] = (INNER, HIDDEN)
        keys[f"mixins.mlp.vision_dense_4h_to_h_list.{i}.weight"] = (HIDDEN, INNER)
        keys[f"mixins.mlp.vision_gate_proj.{i}.weight"] = (INNER, HIDDEN)
        keys[f"mixins.rotary.vision_query_key_value_list.{i}.weight"] = (3 * HIDDEN, HIDDEN)
        keys[f"mixins.rotary.vision_dense_list.{i}.weight"] = (HIDDEN, HIDDEN)
    return keys


def _eva_keys(positions: int) -> dict[str, tuple[int, ...]]:
    keys = {
        "mixins.eva.boi": (1, 1, HIDDEN),
        "mixins.eva.eoi": (1, 1, HIDDEN),
        "mixins.eva.linear_proj.linear_proj.weight": (HIDDEN, EVA_WIDTH),
        "mixins.eva.linear_proj.norm1.weight": (HIDDEN,),
        "mixins.eva.linear_proj.norm1.bias": (HIDDEN,),
        "mixins.eva.linear_proj.dense_h_to_4h.weight": (INNER, HIDDEN),
        "mixins.eva.linear_proj.gate_proj.weight": (INNER, HIDDEN),
        "mixins.eva.linear_proj.dense_4h_to_h.weight": (HIDDEN, INNER),
        "mixins.eva.vit_model.transformer.word_embeddings.weight": (1, EVA_WIDTH),
        "mixins.eva.vit_model.transformer.position_embeddings.weight": (positions, EVA_WIDTH),
        "mixins.eva.vit_model.mixins.patch_embedding.proj.weight": (EVA_WIDTH, 3, 14, 14),
        "mixins.eva.vit_model.mixins.patch_embedding.proj.bias": (EVA_WIDTH,),
    }
    for k in range(EVA_LAYERS):
        layer = f"mixins.eva.vit_model.transformer.layers.{k}."
        for name, (out, inp) in {
            "attention.query_key_value": (3 * EVA_WIDTH, EVA_WIDTH),
            "attention.dense": (EVA_WIDTH, EVA_WIDTH),
            "mlp.dense_h_to_4h": (EVA_INNER, EVA_WIDTH),
            "mlp.dense_4h_to_h": (EVA_WIDTH, EVA_INNER),
        }.items():
            keys[f"{layer}{name}.weight"], keys[f"{layer}{name}.bias"] = (out, inp), (out,)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            keys[f"{layer}{norm}.weight"] = keys[f"{layer}{norm}.bias"] = (EVA_WIDTH,)
    return keys


def _cogagent_keys() -> dict[str, tuple[int, ...]]:
    vit = "mixins.encoder.vit.model."
    keys = {
        "mixins.eva.pos_embed": (256, EVA_WIDTH),
        "mixins.encoder.pos_embed": (6400, CROSS_WIDTH),
        vit + "cls_token": (1, 1, CROSS_WIDTH),
        vit + "pos_embed": (1, 6401, CROSS_WIDTH),
        vit + "patch_embed.proj.weight": (CROSS_WIDTH, 3, 14, 14),
        vit + "patch_embed.proj.bias": (CROSS_WIDTH,),
        vit + "rope.freqs_cos": (6400, 64),
        vit + "rope.freqs_sin": (6400, 64),
        vit + "norm.weight": (CROSS_WIDTH,),
        vit + "norm.bias": (CROSS_WIDTH,),
        vit + "head.weight": (768, CROSS_WIDTH),
        vit + "head.bias": (768,),
    }
    for i in range(LAYERS):
        layer = f"transformer.layers.{i}."
        keys[layer + "cross_attention.query.weight"] = (1024, HIDDEN)
        keys[layer + "cross_attention.key_value.weight"] = (2048, CROSS_WIDTH)
        keys[layer + "cross_attention.dense.weight"] = (HIDDEN, 1024)
        keys[layer + "post_cross_attention_layernorm.weight"] = (HIDDEN,)
    for j in range(CROSS_BLOCKS):
        block = f"{vit}blocks.{j}."
        keys[block + "attn.rope.freqs_cos"] = keys[block + "attn.rope.freqs_sin"] = (6400, 64)
        for name in ("norm1", "norm2", "attn.inner_attn_ln"):
            keys[f"{block}{name}.weight"] = keys[f"{block}{name}.bias"] = (CROSS_WIDTH,)
        for name in ("q_proj", "k_proj", "v_proj"):
            keys[f"{block}attn.{name}.weight"] = (CROSS_WIDTH, CROSS_WIDTH)
        keys[block + "attn.q_bias"] = keys[block + "attn.v_bias"] = (CROSS_WIDTH,)
        keys[block + "attn.proj.weight"], keys[block + "attn.proj.bias"] = (
            (CROSS_WIDTH, CROSS_WIDTH),
            (CROSS_WIDTH,),
        )
        for name in ("w1", "w2"):
            keys[f"{block}mlp.{name}.weight"], keys[f"{block}mlp.{name}.bias"] = (
                (CROSS_INNER, CROSS_WIDTH),
                (CROSS_INNER,),
            )
        keys[block + "mlp.ffn_ln.weight"] = keys[block + "mlp.ffn_ln.bias"] = (CROSS_INNER,)
        keys[block + "mlp.w3.weight"], keys[block + "mlp.w3.bias"] = (
            (CROSS_WIDTH, CROSS_INNER),
            (CROSS_WIDTH,),
        )
    return keys


# (preset, published keys, quantized layers: 10 per LLM layer + LM head + 4 per EVA layer (+ 3 cross))
MODELS = {
    "cogvlm-chat-v1.1": ("cogvlm-17b-490", {**_llm_keys(), **_eva_keys(1226)}, 10 * 32 + 1 + 4 * 63),
    "cogagent-chat": (
        "cogagent-18b",
        {**_llm_keys(), **_eva_keys(257), **_cogagent_keys()},
        13 * 32 + 1 + 4 * 63,
    ),
}
QUANTS = [None, QuantConfig(8), QuantConfig(4)]

# This rank's piece at TP=2 of representative keys: split rows (column-parallel, fused QKV per block,
# the vocabulary), split inputs (row-parallel), or whole (norms, the vision adapter, the cross tower).
TP2_PIECES = {
    "transformer.word_embeddings.weight": (16000, HIDDEN),
    "mixins.lm.lm_head.weight": (16000, HIDDEN),
    "transformer.layers.3.attention.query_key_value.weight": (6144, HIDDEN),
    "transformer.layers.3.attention.dense.weight": (HIDDEN, 2048),
    "mixins.mlp.vision_dense_4h_to_h_list.7.weight": (HIDDEN, 5504),
    "mixins.mlp.gate_proj.0.weight": (5504, HIDDEN),
    "mixins.eva.vit_model.transformer.layers.62.attention.query_key_value.bias": (2688,),
    "mixins.eva.vit_model.transformer.layers.0.mlp.dense_4h_to_h.weight": (EVA_WIDTH, 7680),
    "mixins.eva.linear_proj.dense_h_to_4h.weight": (INNER, HIDDEN),
    "transformer.layers.31.input_layernorm.weight": (HIDDEN,),
}
COGAGENT_TP2_PIECES = {
    "transformer.layers.0.cross_attention.key_value.weight": (1024, CROSS_WIDTH),
    "transformer.layers.0.cross_attention.dense.weight": (HIDDEN, 512),
    "mixins.encoder.vit.model.blocks.5.mlp.w1.weight": (CROSS_INNER, CROSS_WIDTH),
}


def _fake_source(published: dict, source_ranks: int, plan_rules) -> CheckpointTensors:
    whole = {key: torch.empty(shape, dtype=BF16, device="meta") for key, shape in published.items()}
    if source_ranks == 1:
        return CheckpointTensors([whole], "published")
    shards = [
        {key: shard_tensor(value, plan_rules[key], rank, source_ranks) for key, value in whole.items()}
        for rank in range(source_ranks)
    ]
    return CheckpointTensors(shards, f"published-mp{source_ranks}")


def _rules(preset_name: str):
    from cogvlm.checkpoints.model_parallel import shard_rules_for

    return shard_rules_for(preset(preset_name))


@pytest.mark.parametrize("quant", QUANTS, ids=lambda q: q.describe() if q else "bf16")
@pytest.mark.parametrize("layout", [(1, 1), (1, 2), (2, 1), (2, 2)], ids=lambda l: f"mp{l[0]}-tp{l[1]}")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_published_key_is_planned_with_its_piece_and_quantized_shape(name, layout, quant):
    preset_name, published, quantized_layers = MODELS[name]
    source_ranks, tp_size = layout
    tensors = _fake_source(published, source_ranks, _rules(preset_name))
    pieces = {**TP2_PIECES, **(COGAGENT_TP2_PIECES if "cogagent" in name else {})}
    for rank in range(tp_size):
        tp = TensorParallel(group="planning needs no collectives", rank=rank, size=tp_size)
        plan = plan_model_load(preset(preset_name), tensors, dtype=BF16, tp=tp, quant=quant)
        planned = {step.key: step for step in plan.keys}
        assert len(planned) == len(plan.keys) and set(planned) == set(published)
        assert plan.init_names == []
        for key, step in planned.items():
            assert _is_piece(step.shape, published[key], tp_size), (key, step.shape)
        for key, shape in pieces.items() if tp_size == 2 else ():
            assert planned[key].shape == shape, key
        _check_quantized(plan, quant, quantized_layers)
        assert all(t.is_meta for t in plan.model.state_dict().values())


def _is_piece(shape: tuple[int, ...], whole: tuple[int, ...], size: int) -> bool:
    """`shape` is `whole`, or `whole` with one dimension divided by `size`."""
    if shape == whole:
        return True
    differing = [dim for dim, (a, b) in enumerate(zip(shape, whole, strict=True)) if a != b]
    return len(differing) == 1 and shape[differing[0]] * size == whole[differing[0]]


def _check_quantized(plan, quant, quantized_layers: int) -> None:
    quantized = [step for step in plan.keys if step.quantize]
    layers = [module for module in plan.model.modules() if is_quantized(module)]
    assert len(quantized) == len(layers) == (0 if quant is None else quantized_layers)
    for step in quantized:
        layer = plan.model.get_submodule(step.key.rpartition(".")[0])
        out_features, in_features = step.shape
        width = in_features // 2 if quant.bits == 4 else in_features
        assert tuple(layer.weight.shape) == (out_features, width), step.key
        assert layer.weight.dtype == (torch.uint8 if quant.bits == 4 else torch.int8)
        assert tuple(layer.weight_scale.shape) == (out_features,) and layer.weight_scale.dtype == BF16
        assert step.dtype == BF16
