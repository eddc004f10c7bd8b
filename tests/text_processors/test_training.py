"""Tests of cogvlm.text_processors.training."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cogvlm.text_processors.tokenizer import LlamaTokenizer
from cogvlm.text_processors.training import IGNORE_INDEX, SampleTooLong, TrainingInputs, build_training_inputs
from tests.golden import case_id, golden_dir, json_cases, tokenizer_path

TRAIN_CASES = json_cases("train_text_processor.json")
PER_TOKEN = (
    "input_ids",
    "labels",
    "position_ids",
    "image_embed_mask",
    "vision_expert_mask",
    "image_rope_mask",
)
LONG_CAPTION = " ".join(["a red box and a blue circle"] * 20)


@functools.cache
def load(path: Path) -> LlamaTokenizer:
    """A tokenizer per file, loaded once."""
    return LlamaTokenizer.from_file(path)


def tokenizer() -> LlamaTokenizer:
    """The shared golden tokenizer."""
    return load(golden_dir() / "tokenizer.model")


def build_case(case, **overrides) -> TrainingInputs | SampleTooLong:
    """Our training inputs for a golden case."""
    model_dir, _, golden = case
    arguments = dict(
        version=golden["version"],
        image_length=golden["image_length"],
        max_target_length=golden["max_target_length"],
    )
    arguments.update(overrides)
    return build_training_inputs(
        load(tokenizer_path(model_dir)), golden["caption"], golden["prompt"], **arguments
    )


@pytest.mark.parametrize("policy", ["skip", "truncate"])
@pytest.mark.parametrize("case", TRAIN_CASES, ids=case_id)
def test_training_inputs_match_golden(case, policy):
    result = build_case(case, on_overflow=policy)
    golden = case[2]
    assert isinstance(result, TrainingInputs)
    for name in PER_TOKEN:
        assert getattr(result, name).long().tolist() == [golden[name]], name
    assert result.context_length == golden["context_length"]
    assert list(result.image_positions) == golden["image_position"]
    assert golden["pad_token_id_used"] == load(tokenizer_path(case[0])).pad_id
    assert not result.was_truncated


@pytest.mark.parametrize("case", TRAIN_CASES, ids=case_id)
def test_training_attention_mask_matches_golden_tensor(case):
    model_dir, name, _ = case
    if not (model_dir / "cases.safetensors").is_file():
        pytest.skip(f"{model_dir} has no cases.safetensors")
    with safe_open(str(model_dir / "cases.safetensors"), "pt") as tensors:
        expected = tensors.get_tensor(f"{name}.attention_mask")
    mask = build_case(case).attention_mask
    assert mask.dtype == expected.dtype and torch.equal(mask, expected)


def test_labels_cover_exactly_the_caption_and_eos():
    result = build_training_inputs(
        tokenizer(), "a blue circle", "What is it?", version="chat_old", image_length=4, max_target_length=48
    )
    caption_ids = tokenizer().encode("a blue circle")
    targets = [label for label in result.labels[0].tolist() if label != IGNORE_INDEX]
    assert targets == [*caption_ids, tokenizer().eos_id]
    start = result.context_length
    assert result.input_ids[0, start : start + len(targets)].tolist() == targets


def test_overlong_caption_is_reported_not_truncated_by_default():
    result = build_training_inputs(
        tokenizer(), LONG_CAPTION, "Describe.", version="chat", image_length=16, max_target_length=64
    )
    assert isinstance(result, SampleTooLong)
    assert (result.reason, result.limit, result.max_target_length) == ("caption", 64 - 16 - 5, 64)
    assert result.length > result.limit
    assert "caption length" in result.describe()


def test_truncate_policy_cuts_the_caption_like_the_official_code():
    result = build_training_inputs(
        tokenizer(),
        LONG_CAPTION,
        "Describe.",
        version="chat",
        image_length=16,
        max_target_length=64,
        on_overflow="truncate",
    )
    assert isinstance(result, TrainingInputs) and result.was_truncated
    ids = result.input_ids[0].tolist()
    unexpanded_length = 64 - 16 - 5
    # limit on unexpanded ids, then EOS, then the image block adds image_length + 1 slots
    assert ids[unexpanded_length + 17] == tokenizer().eos_id
    assert ids[unexpanded_length + 18 :] == [tokenizer().pad_id] * (64 - unexpanded_length - 18)
    assert result.labels[0, unexpanded_length + 17].item() == tokenizer().eos_id


@pytest.mark.parametrize("policy", ["skip", "truncate"])
def test_overlong_prompt_is_reported_under_both_policies(policy):
    result = build_training_inputs(
        tokenizer(),
        "red",
        LONG_CAPTION,
        version="vqa",
        image_length=16,
        max_target_length=64,
        on_overflow=policy,
    )
    assert isinstance(result, SampleTooLong)
    assert (result.reason, result.limit) == ("prompt", 54)


def test_several_images_that_overflow_the_sequence_are_reported():
    result = build_training_inputs(
        tokenizer(),
        "red",
        "<EOI><EOI><EOI>x",
        version="base",
        image_length=16,
        max_target_length=64,
        on_overflow="truncate",
    )
    assert isinstance(result, SampleTooLong)
    assert result.reason == "prompt"
    result = build_training_inputs(
        tokenizer(),
        "<EOI><EOI><EOI>red",
        "<EOI>x",
        version="base",
        image_length=16,
        max_target_length=64,
        on_overflow="truncate",
    )
    assert isinstance(result, SampleTooLong) and result.reason == "sequence"
    text_length = len(tokenizer().encode("x")) + len(tokenizer().encode("red"))
    assert (result.length, result.limit) == (1 + 4 * 18 + text_length + 1, 64)


def test_image_slots_inside_the_caption_are_not_targets():
    result = build_training_inputs(
        tokenizer(), "see<EOI>this", "<EOI>Q", version="base", image_length=2, max_target_length=40
    )
    assert isinstance(result, TrainingInputs) and len(result.image_positions) == 2
    caption_eoi = result.image_positions[1]
    assert result.labels[0, caption_eoi - 3 : caption_eoi + 1].tolist() == [IGNORE_INDEX] * 4


def test_prompt_tags_are_stripped_before_templating():
    plain = build_training_inputs(
        tokenizer(), "red", "Q?", version="chat", image_length=4, max_target_length=64
    )
    tagged = build_training_inputs(
        tokenizer(), "<s>red</s>", "<pad>Q?</s>", version="chat", image_length=4, max_target_length=64
    )
    assert torch.equal(plain.input_ids, tagged.input_ids)


def test_unknown_policy_and_version_are_rejected():
    with pytest.raises(ValueError, match="on_overflow must be 'skip' or 'truncate', got 'drop'"):
        build_training_inputs(
            tokenizer(), "a", "b", version="chat", image_length=4, max_target_length=64, on_overflow="drop"
        )
    with pytest.raises(ValueError, match="unknown prompt version 'qa'"):
        build_training_inputs(tokenizer(), "a", "b", version="qa", image_length=4, max_target_length=64)
