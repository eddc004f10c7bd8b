"""The published architectures, key by key: CogVLM-17B and CogAgent-18B built on the meta device (nothing is
allocated) hold exactly SPEC 2.3's SAT keys with its shapes, and their HF names are SPEC 2.4's."""

from __future__ import annotations

import pytest

from cogvlm.checkpoints.hf_format import sat_state_dict_to_hf
from cogvlm.models.builders import build_model
from cogvlm.models.presets import preset

LAYERS, EVA_LAYERS, CROSS_BLOCKS = 32, 63, 24
H, FF, VOCAB, QKV = 4096, 11008, 32000, 12288
E, E_FF, E_QKV = 1792, 15360, 5376
C, C_FF = 1024, 2730


def _llm() -> dict[str, tuple[int, ...]]:
    keys = {
        "transformer.word_embeddings.weight": (VOCAB, H),
        "transformer.final_layernorm.weight": (H,),
        "mixins.lm.lm_head.weight": (VOCAB, H),
        "mixins.rotary.rotary_emb.inv_freq": (64,),
    }
    for i in range(LAYERS):
        keys.update(
            {
                f"transformer.layers.{i}.input_layernorm.weight": (H,),
                f"transformer.layers.{i}.attention.query_key_value.weight": (QKV, H),
                f"transformer.layers.{i}.attention.dense.weight": (H, H),
                f"transformer.layers.{i}.post_attention_layernorm.weight": (H,),
                f"transformer.layers.{i}.mlp.dense_h_to_4h.weight": (FF, H),
                f"transformer.layers.{i}.mlp.dense_4h_to_h.weight": (H, FF),
                f"mixins.mlp.gate_proj.{i}.weight": (FF, H),
                f"mixins.mlp.vision_dense_h_to_4h_list.{i}.weight": (FF, H),
                f"mixins.mlp.vision_dense_4h_to_h_list.{i}.weight": (H, FF),
                f"mixins.mlp.vision_gate_proj.{i}.weight": (FF, H),
                f"mixins.rotary.vision_query_key_value_list.{i}.weight": (QKV, H),
                f"mixins.rotary.vision_dense_list.{i}.weight": (H, H),
            }
        )
    return keys


def _image_side(positions: int) -> dict[str, tuple[int, ...]]:
    eva = "mixins.eva.vit_model."
    keys = {
        "mixins.eva.boi": (1, 1, H),
        "mixins.eva.eoi": (1, 1, H),
        "mixins.eva.linear_proj.linear_proj.weight": (H, E),
        "mixins.eva.linear_proj.norm1.weight": (H,),
        "mixins.eva.linear_proj.norm1.bias": (H,),
        "mixins.eva.linear_proj.dense_h_to_4h.weight": (FF, H),
        "mixins.eva.linear_proj.gate_proj.weight": (FF, H),
        "mixins.eva.linear_proj.dense_4h_to_h.weight": (H, FF),
        eva + "transformer.word_embeddings.weight": (1, E),
        eva + "transformer.position_embeddings.weight": (positions, E),
        eva + "mixins.patch_embedding.proj.weight": (E, 3, 14, 14),
        eva + "mixins.patch_embedding.proj.bias": (E,),
    }
    for k in range(EVA_LAYERS):
        layer = f"{eva}transformer.layers.{k}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            keys.update({f"{layer}{norm}.weight": (E,), f"{layer}{norm}.bias": (E,)})
        for name, out, inp in (
            ("attention.query_key_value", E_QKV, E),
            ("attention.dense", E, E),
            ("mlp.dense_h_to_4h", E_FF, E),
            ("mlp.dense_4h_to_h", E, E_FF),
        ):
            keys.update({f"{layer}{name}.weight": (out, inp), f"{layer}{name}.bias": (out,)})
    return keys


def _cross_block(j: int) -> dict[str, tuple[int, ...]]:
    block = f"mixins.encoder.vit.model.blocks.{j}."
    keys = {f"{block}attn.{name}.weight": (C, C) for name in ("q_proj", "k_proj", "v_proj")}
    keys.update({f"{block}attn.q_bias": (C,), f"{block}attn.v_bias": (C,)})
    keys.update({f"{block}attn.rope.freqs_cos": (6400, 64), f"{block}attn.rope.freqs_sin": (6400, 64)})
    for name, width in (("norm1", C), ("norm2", C), ("attn.inner_attn_ln", C), ("mlp.ffn_ln", C_FF)):
        keys.update({f"{block}{name}.weight": (width,), f"{block}{name}.bias": (width,)})
    for name, out, inp in (
        ("attn.proj", C, C),
        ("mlp.w1", C_FF, C),
        ("mlp.w2", C_FF, C),
        ("mlp.w3", C, C_FF),
    ):
        keys.update({f"{block}{name}.weight": (out, inp), f"{block}{name}.bias": (out,)})
    return keys


def _cogagent_additions() -> dict[str, tuple[int, ...]]:
    tower = "mixins.encoder.vit.model."
    keys = {
        "mixins.eva.pos_embed": (256, E),
        "mixins.encoder.pos_embed": (6400, C),
        tower + "cls_token": (1, 1, C),
        tower + "pos_embed": (1, 6401, C),
        tower + "patch_embed.proj.weight": (C, 3, 14, 14),
        tower + "patch_embed.proj.bias": (C,),
        tower + "rope.freqs_cos": (6400, 64),
        tower + "rope.freqs_sin": (6400, 64),
        tower + "norm.weight": (C,),
        tower + "norm.bias": (C,),
        tower + "head.weight": (768, C),
        tower + "head.bias": (768,),
    }
    for i in range(LAYERS):
        keys.update(
            {
                f"transformer.layers.{i}.cross_attention.query.weight": (C, H),
                f"transformer.layers.{i}.cross_attention.key_value.weight": (2 * C, C),
                f"transformer.layers.{i}.cross_attention.dense.weight": (H, C),
                f"transformer.layers.{i}.post_cross_attention_layernorm.weight": (H,),
            }
        )
    for j in range(CROSS_BLOCKS):
        keys.update(_cross_block(j))
    return keys


def spec_sat_keys(name: str) -> dict[str, tuple[int, ...]]:
    """SPEC 2.3: every SAT key of the published model and its shape."""
    if name == "cogvlm-17b-490":
        return {**_llm(), **_image_side(1226)}
    return {**_llm(), **_image_side(257), **_cogagent_additions()}


# SPEC 2.4, as literal prefixes: SAT name -> HF name (sub-names after them are the same on both sides).
_HF_NAMES = [
    ("transformer.word_embeddings.weight", "model.embed_tokens.weight"),
    ("transformer.final_layernorm.weight", "model.norm.weight"),
    ("mixins.lm.lm_head.weight", "lm_head.weight"),
    ("transformer.layers.{i}.input_layernorm.", "model.layers.{i}.input_layernorm."),
    ("transformer.layers.{i}.post_attention_layernorm.", "model.layers.{i}.post_attention_layernorm."),
    (
        "transformer.layers.{i}.attention.query_key_value.",
        "model.layers.{i}.self_attn.language_expert_query_key_value.",
    ),
    ("transformer.layers.{i}.attention.dense.", "model.layers.{i}.self_attn.language_expert_dense."),
    (
        "mixins.rotary.vision_query_key_value_list.{i}.",
        "model.layers.{i}.self_attn.vision_expert_query_key_value.",
    ),
    ("mixins.rotary.vision_dense_list.{i}.", "model.layers.{i}.self_attn.vision_expert_dense."),
    ("mixins.mlp.gate_proj.{i}.", "model.layers.{i}.mlp.language_mlp.gate_proj."),
    ("transformer.layers.{i}.mlp.dense_h_to_4h.", "model.layers.{i}.mlp.language_mlp.up_proj."),
    ("transformer.layers.{i}.mlp.dense_4h_to_h.", "model.layers.{i}.mlp.language_mlp.down_proj."),
    ("mixins.mlp.vision_gate_proj.{i}.", "model.layers.{i}.mlp.vision_mlp.gate_proj."),
    ("mixins.mlp.vision_dense_h_to_4h_list.{i}.", "model.layers.{i}.mlp.vision_mlp.up_proj."),
    ("mixins.mlp.vision_dense_4h_to_h_list.{i}.", "model.layers.{i}.mlp.vision_mlp.down_proj."),
    ("transformer.layers.{i}.cross_attention.", "model.layers.{i}.cross_attn."),
    (
        "transformer.layers.{i}.post_cross_attention_layernorm.",
        "model.layers.{i}.post_cross_attention_layernorm.",
    ),
    ("mixins.eva.vit_model.mixins.patch_embedding.proj.", "model.vision.patch_embedding.proj."),
    ("mixins.eva.vit_model.transformer.word_embeddings.weight", "model.vision.patch_embedding.cls_embedding"),
    (
        "mixins.eva.vit_model.transformer.position_embeddings.",
        "model.vision.patch_embedding.position_embedding.",
    ),
    (
        "mixins.eva.vit_model.transformer.layers.{k}.mlp.dense_h_to_4h.",
        "model.vision.transformer.layers.{k}.mlp.fc1.",
    ),
    (
        "mixins.eva.vit_model.transformer.layers.{k}.mlp.dense_4h_to_h.",
        "model.vision.transformer.layers.{k}.mlp.fc2.",
    ),
    ("mixins.eva.vit_model.transformer.layers.{k}.", "model.vision.transformer.layers.{k}."),
    ("mixins.eva.linear_proj.", "model.vision.linear_proj."),
    ("mixins.eva.", "model.vision."),  # boi, eoi, pos_embed
    ("mixins.encoder.vit.model.", "model.cross_vision.vit.model."),
    ("mixins.encoder.pos_embed", "model.cross_vision.pos_embed"),
]


def spec_hf_name(sat_key: str) -> str:
    """The HF name SPEC 2.4 gives a SAT key (the first, most specific, matching row)."""
    parts = sat_key.split(".")
    for sat, hf in _HF_NAMES:
        for index in {part for part in parts if part.isdigit()} or {""}:
            prefix = sat.replace("{i}", index).replace("{k}", index)
            if sat_key.startswith(prefix) and ("{" not in sat or index):
                return hf.replace("{i}", index).replace("{k}", index) + sat_key[len(prefix) :]
    raise AssertionError(f"SPEC 2.4 has no HF name for {sat_key}")


def _spec_hf_keys(sat_keys: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    hf = {
        spec_hf_name(key): shape
        for key, shape in sat_keys.items()
        if key != "mixins.rotary.rotary_emb.inv_freq"
    }
    # HF stores the rotary inv_freq once per layer.
    hf.update({f"model.layers.{i}.self_attn.rotary_emb.inv_freq": (64,) for i in range(LAYERS)})
    return hf


@pytest.mark.parametrize("name", ["cogvlm-17b-490", "cogagent-18b"])
def test_every_sat_key_and_shape_is_the_published_ones(name):
    state = build_model(preset(name), device="meta").state_dict()
    ours = {key: tuple(tensor.shape) for key, tensor in state.items()}
    expected = spec_sat_keys(name)
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    wrong = {key: (ours[key], shape) for key, shape in expected.items() if ours[key] != shape}
    assert wrong == {}


@pytest.mark.parametrize("name", ["cogvlm-17b-490", "cogagent-18b"])
def test_every_hf_key_and_shape_is_the_published_ones(name):
    state = build_model(preset(name), device="meta").state_dict()
    ours = {key: tuple(tensor.shape) for key, tensor in sat_state_dict_to_hf(state, LAYERS).items()}
    expected = _spec_hf_keys(spec_sat_keys(name))
    assert sorted(set(ours) ^ set(expected)) == []
    assert {key: shape for key, shape in ours.items() if expected[key] != shape} == {}


def test_cogagent_18b_has_the_published_counts():
    keys = spec_sat_keys("cogagent-18b")
    assert sum(1 for key in keys if key.endswith("cross_attention.query.weight")) == LAYERS
    assert sum(1 for key in keys if key.endswith(".attn.q_proj.weight")) == CROSS_BLOCKS
    extra = set(keys) - set(spec_sat_keys("cogvlm-17b-490"))
    assert all(
        key.startswith(("mixins.encoder.", "mixins.eva.pos_embed", "transformer.layers.")) for key in extra
    )
