"""Tests of cogvlm.text_processors.inference (and the image-slot helpers it uses)."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest
import sentencepiece
import torch
from safetensors import safe_open

from cogvlm.text_processors.inference import build_inference_inputs, position_ids_from_rope_mask
from cogvlm.text_processors.prompts import IMAGE_MARKER
from cogvlm.text_processors.tokenizer import LlamaTokenizer
from tests.golden import case_id, golden_dir, image_length, json_cases, load_json, tokenizer_path

TEXT_CASES = json_cases("text_inputs.json")
MASKS = ("image_embed_mask", "vision_expert_mask", "image_rope_mask")


@functools.cache
def load(path: Path) -> LlamaTokenizer:
    """A tokenizer per file, loaded once."""
    return LlamaTokenizer.from_file(path)


def case_image_length(model_dir: Path, golden: dict) -> int:
    """The model's image_length: from model_info.json, else from the golden rope mask."""
    recorded = image_length(model_dir)
    return (
        recorded
        if recorded is not None
        else sum(golden["image_rope_mask"]) // golden["prompt"].count("<EOI>")
    )


def build_case(case) -> tuple:
    """Our inputs for a golden text case, and the golden case."""
    model_dir, _, golden = case
    tokenizer = load(tokenizer_path(model_dir))
    return build_inference_inputs(tokenizer, golden["prompt"], case_image_length(model_dir, golden)), golden


@pytest.mark.parametrize("case", TEXT_CASES, ids=case_id)
def test_input_ids_and_positions_match_golden(case):
    inputs, golden = build_case(case)
    assert inputs.input_ids.dtype == torch.long and inputs.position_ids.dtype == torch.long
    assert inputs.input_ids.tolist() == [golden["input_ids"]]
    assert inputs.position_ids.tolist() == [golden["position_ids"]]
    assert inputs.seq_len == golden["seq_len"]


@pytest.mark.parametrize("case", TEXT_CASES, ids=case_id)
def test_image_masks_match_golden(case):
    inputs, golden = build_case(case)
    for name in MASKS:
        mask = getattr(inputs, name)
        assert mask.dtype == torch.bool, name
        assert mask.long().tolist() == [golden[name]], name


@pytest.mark.parametrize("case", TEXT_CASES, ids=case_id)
def test_inputs_match_golden_case_tensors(case):
    model_dir, name, _ = case
    if not (model_dir / "cases.safetensors").is_file():
        pytest.skip(f"{model_dir} has no cases.safetensors")
    inputs, _ = build_case(case)
    with safe_open(str(model_dir / "cases.safetensors"), "pt") as tensors:
        for field in ("input_ids", "position_ids", *MASKS):
            assert torch.equal(getattr(inputs, field).long(), tensors.get_tensor(f"{name}.{field}")), field


@pytest.mark.parametrize("case", TEXT_CASES, ids=case_id)
def test_each_piece_is_encoded_by_plain_sentencepiece(case):
    model_dir, _, golden = case
    plain = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_path(model_dir)))
    pieces = golden["prompt"].split(IMAGE_MARKER)
    assert [plain.encode(p) for p in pieces] == golden["piece_token_ids"]
    assert [load(tokenizer_path(model_dir)).encode(p) for p in pieces] == golden["piece_token_ids"]


@pytest.mark.parametrize("case", TEXT_CASES, ids=case_id)
def test_positions_continue_by_one_over_generated_tokens(case):
    model_dir, name, golden = case
    generation = model_dir / "generation.json"
    if not generation.is_file() or name not in load_json(generation):
        pytest.skip(f"no generation golden for {case_id(case)}")
    produced = load_json(generation)[name]
    inputs, _ = build_case(case)
    new = len(produced["new_token_ids"])
    rope = torch.cat([inputs.image_rope_mask, torch.zeros(1, new, dtype=torch.bool)], dim=1)  # [1, L + new]
    assert (
        position_ids_from_rope_mask(rope)[0, -new:].tolist() == produced["position_ids_of_generated_tokens"]
    )


def test_text_only_prompt_has_no_image_slots():
    tokenizer = load(golden_dir() / "tokenizer.model")
    inputs = build_inference_inputs(tokenizer, "Question: What is red? Answer:", image_length=16)
    assert inputs.input_ids.tolist() == [
        [tokenizer.bos_id, *tokenizer.encode("Question: What is red? Answer:")]
    ]
    assert not any(getattr(inputs, name).any() for name in MASKS)
    assert inputs.position_ids.tolist() == [list(range(inputs.seq_len))]
    assert inputs.num_images == 0


def test_several_markers_each_expand_to_an_image_block():
    tokenizer = load(golden_dir() / "tokenizer.model")
    rng = random.Random(3)
    words = ["red", " box", "  ", "Question:", "中", "😀", " [INST]", ""]
    for _ in range(50):
        n, pieces = rng.randint(1, 5), ["".join(rng.choices(words, k=rng.randint(0, 4))) for _ in range(4)]
        inputs = build_inference_inputs(tokenizer, IMAGE_MARKER.join(pieces), image_length=n)
        expected = [tokenizer.bos_id, *tokenizer.encode(pieces[0])]
        for piece in pieces[1:]:
            expected += [0] * (n + 2) + tokenizer.encode(piece)
        assert inputs.input_ids.tolist() == [expected]
        assert inputs.num_images == 3
        assert inputs.image_rope_mask.sum().item() == 3 * n
        assert inputs.vision_expert_mask.sum().item() == 3 * (n + 1)
        assert inputs.image_embed_mask.sum().item() == 3 * (n + 2)
        for eoi in inputs.image_positions:
            assert inputs.image_embed_mask[0, eoi] and not inputs.vision_expert_mask[0, eoi]
            assert inputs.position_ids[0, eoi] == inputs.position_ids[0, eoi - 1] + 1


def test_position_ids_share_one_position_per_image_run():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 1, 1, 0]], dtype=torch.bool)
    assert position_ids_from_rope_mask(mask).tolist() == [[0, 1, 2, 2, 2, 3, 4, 5, 5, 6]]
    batch = torch.stack([mask[0], torch.zeros(10, dtype=torch.bool)])  # [2, 10]
    assert position_ids_from_rope_mask(batch)[1].tolist() == list(range(10))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_invalid_image_length_is_rejected(bad):
    tokenizer = load(golden_dir() / "tokenizer.model")
    with pytest.raises(ValueError, match="image_length must be a positive int"):
        build_inference_inputs(tokenizer, "<EOI>hi", image_length=bad)
