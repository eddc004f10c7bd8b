"""CogAgent beyond the shared golden tests: the EVA2-CLIP-L tower, its rope tables and the cross memory."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from cogvlm.checkpoints.loading import load_model, load_model_from_state_dict, reset_computed_buffers
from cogvlm.inference.generate import GenerationConfig, generate
from cogvlm.models.builders import build_model
from cogvlm.models.context import ForwardContext
from cogvlm.models.eva_large import rope_2d_tables, rotate_pairs
from cogvlm.models.presets import preset
from cogvlm.text_processors import LlamaTokenizer, build_inference_inputs
from tests.golden import golden_dir, greedy_cases, prompts
from tests.golden_models import (
    case_context,
    cases,
    first_case,
    golden_model,
    image_inputs,
    recorded_sensitivity,
    tokenizer_file,
)

MODEL_DIR = golden_dir() / "cogagent"
ROPE = "mixins.encoder.vit.model.rope."
# The reference runs float32 on CPU; the golden README suggests 1e-4 absolute (bit-exact on the machine the
# set was made on; other CPUs' float32 kernels round differently, an AVX-512 one by up to 1.2e-5).
TOLERANCE = dict(atol=1e-4, rtol=0)


def _golden_state():
    return load_file(MODEL_DIR / "weights.safetensors")


def _first_case() -> dict[str, torch.Tensor]:
    return first_case(MODEL_DIR)


def _context(tensors, **overrides) -> ForwardContext:
    return replace(case_context(MODEL_DIR, tensors), **overrides)


def _logits(model, tensors, **overrides) -> torch.Tensor:
    with torch.no_grad():
        return model(tensors["input_ids"], _context(tensors, **overrides)).logits


def test_recipe_names_every_mixin_and_the_cross_encoder_hook():
    model = build_model(preset("tiny-cogagent"), device="meta")
    assert list(model.mixins) == ["eva", "encoder", "rotary", "mlp", "lm"]
    description = model.describe_hooks()
    assert "encode_cross: encoder (CrossVisionEncoder, replaces default)" in description
    assert "cross_attend: default" in description


def test_rope_tables_equal_the_reference_bit_for_bit():
    state = _golden_state()
    tower = golden_model(MODEL_DIR).config.cross_vision
    grid = tower.image_px // tower.patch_size
    cos, sin = rope_2d_tables(tower.head_width, grid=grid, pretrain_grid=tower.pretrain_grid)
    assert torch.equal(cos, state[ROPE + "freqs_cos"])
    assert torch.equal(sin, state[ROPE + "freqs_sin"])
    for block in range(tower.num_blocks):
        assert torch.equal(cos, state[f"mixins.encoder.vit.model.blocks.{block}.attn.rope.freqs_cos"])


def test_rope_tables_of_the_published_size_have_the_published_shape():
    cos, sin = rope_2d_tables(64, grid=1120 // 14, pretrain_grid=16)
    assert cos.shape == sin.shape == (6400, 64)
    # Patch 0 sits at the origin: no rotation; the first column index step rotates the second half only.
    assert torch.equal(cos[0], torch.ones(64)) and torch.equal(sin[0], torch.zeros(64))
    assert torch.equal(sin[1, :32], torch.zeros(32)) and sin[1, 32] != 0


def test_a_meta_build_recomputes_the_rope_tables_after_to_empty():
    config = golden_model(MODEL_DIR).config
    model = build_model(config, device="meta")
    model.to_empty(device="cpu")
    reset_computed_buffers(model)
    state, ours = _golden_state(), model.state_dict()
    last = config.cross_vision.num_blocks - 1
    for key in (
        ROPE + "freqs_cos",
        ROPE + "freqs_sin",
        f"mixins.encoder.vit.model.blocks.{last}.attn.rope.freqs_sin",
    ):
        assert torch.equal(ours[key], state[key]), key


def test_every_block_shares_the_towers_rope_module():
    tower = build_model(preset("tiny-cogagent"), device="meta").mixins["encoder"].vit.model
    assert all(block.attn.rope is tower.rope for block in tower.blocks)


def test_a_checkpoint_without_the_rope_tables_loads_to_the_same_logits():
    state = {key: value for key, value in _golden_state().items() if "rope.freqs" not in key}
    info_config = golden_model(MODEL_DIR).config
    model = load_model_from_state_dict(info_config, state, "weights without rope tables")
    tensors = _first_case()
    assert torch.equal(_logits(model, tensors), _logits(golden_model(MODEL_DIR), tensors))


def test_rotate_pairs_turns_each_adjacent_pair_by_ninety_degrees():
    assert rotate_pairs(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-2.0, 1.0, -4.0, 3.0]


@pytest.mark.parametrize("case", sorted(cases(MODEL_DIR)))
def test_cross_encoder_outputs_match_the_reference(case):
    pixels = image_inputs(MODEL_DIR)["cross_pixel_values"]
    with torch.no_grad():
        memory = golden_model(MODEL_DIR).encode_cross(pixels)
    torch.testing.assert_close(
        memory.encoder_outputs, cases(MODEL_DIR)[case]["cross_encoder_outputs"], **TOLERANCE
    )


def test_the_last_block_is_built_but_never_run():
    model, _ = load_model(MODEL_DIR / "sat_checkpoint")
    pixels = image_inputs(MODEL_DIR)["cross_pixel_values"]
    blocks = model.mixins["encoder"].vit.model.blocks
    with torch.no_grad():
        before = model.encode_cross(pixels).encoder_outputs
        blocks[-1].mlp.w3.bias.add_(1.0)
        assert torch.equal(model.encode_cross(pixels).encoder_outputs, before)
        blocks[0].mlp.w3.bias.add_(1.0)
        assert (model.encode_cross(pixels).encoder_outputs - before).abs().max() > 1e-2


def test_zeroing_the_cross_image_changes_the_logits_as_much_as_in_the_reference():
    # Guards against a forward that silently skips cross-attention: the change at the last position is the
    # one the reference recorded (float32, so to the parity tolerance).
    case, recorded = recorded_sensitivity(MODEL_DIR)
    model, tensors = golden_model(MODEL_DIR), cases(MODEL_DIR)[case]
    blank = torch.zeros_like(image_inputs(MODEL_DIR)["cross_pixel_values"])
    change = _logits(model, tensors) - _logits(model, tensors, cross_pixel_values=blank)
    expected = recorded["zero_cross_image_maxabs_logit_change_last_pos"]
    assert expected > 1e-2
    assert change[0, -1].abs().max().item() == pytest.approx(expected, abs=1e-4)


def test_without_a_cross_image_the_layers_skip_cross_attention():
    # As in SAT: a decoder layer with no encoder outputs runs self-attention and MLP only.
    model, _ = load_model(MODEL_DIR / "sat_checkpoint")
    tensors = _first_case()
    before = _logits(model, tensors, cross_pixel_values=None)
    with torch.no_grad():
        for layer in model.transformer.layers:
            layer.cross_attention.dense.weight.mul_(3.0)
    assert torch.equal(_logits(model, tensors, cross_pixel_values=None), before)
    assert not torch.equal(_logits(model, tensors), _logits(golden_model(MODEL_DIR), tensors))


def _count_calls(module: torch.nn.Module, counter: list[int]):
    return module.register_forward_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))


def test_generation_encodes_the_cross_image_and_its_keys_values_once():
    model = golden_model(MODEL_DIR)
    prompt = prompts(MODEL_DIR)[greedy_cases(MODEL_DIR)[0]]["prompt"]
    text = build_inference_inputs(
        LlamaTokenizer.from_file(tokenizer_file()), prompt, model.config.image_length
    )
    pixels = image_inputs(MODEL_DIR)
    encoder_calls, key_value_calls, memory_requires_grad = [0], [0], []
    handles = [_count_calls(model.mixins["encoder"].vit, encoder_calls)]
    handles.append(
        model.mixins["encoder"].vit.register_forward_hook(
            lambda _module, _inputs, output: memory_requires_grad.append(output.requires_grad)
        )
    )
    handles += [
        _count_calls(layer.cross_attention.key_value, key_value_calls) for layer in model.transformer.layers
    ]
    try:
        output = generate(
            model,
            text,
            GenerationConfig(max_new_tokens=8, end_token_ids=()),
            pixel_values=pixels["pixel_values"],
            cross_pixel_values=pixels["cross_pixel_values"],
        )
    finally:
        for handle in handles:
            handle.remove()
    assert len(output.token_ids) == 8
    assert encoder_calls[0] == 1
    assert key_value_calls[0] == len(model.transformer.layers)
    assert memory_requires_grad == [False]  # no autograd graph is kept over the tower's activations


def test_the_published_size_has_the_published_parameter_count():
    # SPEC 1.3: CogAgent-18B has 18,291,033,280 parameters (EVA2-CLIP-L: 310,396,608 of them).
    model = build_model(preset("cogagent-18b"), device="meta")
    assert sum(p.numel() for p in model.parameters()) == 18_291_033_280
    tower = model.mixins["encoder"].vit
    assert sum(p.numel() for p in tower.parameters()) == 310_396_608
