"""Tests of cogvlm.text_processors.prompts."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from cogvlm.text_processors.prompts import (
    IMAGE_MARKER,
    PROMPT_VERSIONS,
    build_hf_prompt,
    build_prompt,
    extract_response,
    response_separator,
    sat_version_for_hf_template,
)
from cogvlm.text_processors.tokenizer import LlamaTokenizer
from tests.golden import case_id, json_cases, load_json, tokenizer_path

TEXT_CASES = json_cases("text_inputs.json")
GENERATION_CASES = [c for c in json_cases("generation.json") if "response_after_official_postprocess" in c[2]]
HISTORY = [("What is in the image?", "A red box and a blue circle.")]


@functools.cache
def load(path: Path) -> LlamaTokenizer:
    """A tokenizer per file, loaded once."""
    return LlamaTokenizer.from_file(path)


@pytest.mark.parametrize("case", TEXT_CASES, ids=case_id)
def test_build_prompt_reproduces_golden_prompt(case):
    _, _, golden = case
    history = [tuple(turn) for turn in golden["history"]]
    assert build_prompt(golden["version"], golden["query"], history) == golden["prompt"]


@pytest.mark.parametrize("case", TEXT_CASES, ids=case_id)
def test_response_separator_matches_golden_sep(case):
    assert response_separator(case[2]["version"]) == case[2]["sep"]


@pytest.mark.parametrize("case", GENERATION_CASES, ids=case_id)
def test_extract_response_reproduces_official_postprocess(case):
    model_dir, name, golden = case
    version = load_json(model_dir / "text_inputs.json")[name]["version"]
    decoded = load(tokenizer_path(model_dir)).decode(golden["output_ids"])
    assert extract_response(decoded, version) == golden["response_after_official_postprocess"]


def test_templates_with_history():
    assert build_prompt("chat", "Q2", [("Q1", "R1")]) == "<EOI> [INST] Q1 [/INST] R1 [INST] Q2 [/INST] "
    assert (
        build_prompt("chat_old", "Q2", [("Q1", "R1")]) == "<EOI>Question: Q1 Answer: R1\nQuestion: Q2 Answer:"
    )
    assert build_prompt("base", "Q2", [("Q1", "R1")]) == "<EOI>Q2"
    assert build_prompt("vqa", "Q2", [("Q1", "R1")]) == "<EOI>Question: Q2 Short answer:"


@pytest.mark.parametrize("version", PROMPT_VERSIONS)
def test_prompt_without_image_is_the_same_text_without_marker(version):
    with_image = build_prompt(version, "Q", HISTORY)
    without = build_prompt(version, "Q", HISTORY, has_image=False)
    assert with_image == IMAGE_MARKER + without
    assert IMAGE_MARKER not in without


def test_extract_response_drops_eos_and_keeps_the_last_turn():
    text = "<s><unk> [INST] Q1 [/INST] R1 [INST] Q2 [/INST]  The answer.</s>"
    assert extract_response(text, "chat") == "The answer."
    assert extract_response("<s><unk><unk>Describe it. A box </s>", "base") == "Describe it. A box"


def test_unknown_version_lists_the_valid_names():
    with pytest.raises(
        ValueError, match="unknown prompt version 'chatty'; expected one of: base, chat, chat_old, vqa"
    ):
        build_prompt("chatty", "Q")
    with pytest.raises(ValueError, match="unknown prompt version 'grounding'"):
        response_separator("grounding")


def test_history_turn_that_is_not_a_pair_is_rejected():
    with pytest.raises(ValueError, match=r"history turn 0 must be a \(query, response\) pair"):
        build_prompt("chat", "Q", [("only a query",)])


def test_hf_cogvlm_chat_is_sat_chat_old():
    assert sat_version_for_hf_template("cogvlm", "chat") == "chat_old"
    assert sat_version_for_hf_template("cogvlm", "base") == "base"
    assert sat_version_for_hf_template("cogagent", "chat") == "chat"
    assert build_hf_prompt("cogvlm", "chat", "Q", HISTORY) == build_prompt("chat_old", "Q", HISTORY)[5:]


def test_hf_cogvlm_vqa_keeps_the_history_unlike_sat():
    hf = build_hf_prompt("cogvlm", "vqa", "Q", [("Q1", "R1")])
    assert hf == "Question: Q1 Short answer: R1\nQuestion: Q Short answer:"
    assert build_hf_prompt("cogvlm", "vqa", "Q") == build_prompt("vqa", "Q", has_image=False)


def test_hf_unknown_template_is_rejected():
    with pytest.raises(
        ValueError, match="unknown HF CogVLM template_version 'chat_old'; expected one of: base, chat, vqa"
    ):
        sat_version_for_hf_template("cogvlm", "chat_old")
