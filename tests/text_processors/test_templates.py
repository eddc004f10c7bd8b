"""The grounding and GUI-agent prompt templates and the prompts built from them."""

from __future__ import annotations

import random

import pytest

from cogvlm.text_processors.grounding import Box
from cogvlm.text_processors.templates import (
    PLACEHOLDERS,
    TEMPLATES,
    build_task_prompt,
    choose_template,
    templates,
)


def test_each_list_has_the_reference_count():
    # Counts of the reference's template.py lists (SPEC 4.4).
    counts = {kind: len(entries) for kind, entries in TEMPLATES.items()}
    assert counts == {
        "caption2box": 53,
        "box2caption": 135,
        "caption_with_box": 146,
        "box_qa_reasoning": 40,
        "box_qa_short": 30,
        "agent": 108,
    }


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_every_template_holds_its_placeholder(kind):
    placeholder = PLACEHOLDERS[kind]
    for template in templates(kind):
        if placeholder is None:
            assert "<" not in template, template
        else:
            assert template.count(placeholder) == 1, template


def test_the_readme_agent_prompt_is_reproduced():
    prompt = build_task_prompt("agent", "Search for CogVLM", index=2, with_grounding=True)
    assert prompt == 'What steps do I need to take to "Search for CogVLM"?(with grounding)'


def test_the_readme_grounding_prompts_are_reproduced():
    assert build_task_prompt("caption2box", "children in blue T-shirts", index=3) == (
        "Can you point out children in blue T-shirts in the image "
        "and provide the bounding boxes of its location?"
    )
    assert (
        build_task_prompt("box2caption", Box(86, 540, 400, 760), index=15)
        == "Tell me what you see within the designated area [[086,540,400,760]] in the picture."
    )
    assert build_task_prompt("caption_with_box", index=0) == (
        "Can you provide a description of the image and include the coordinates [[x0,y0,x1,y1]] "
        "for each mentioned object?"
    )


def test_first_entries_of_the_qa_lists_match_the_reference():
    assert (
        build_task_prompt("box_qa_reasoning", "Is it red?", index=0) == "Is it red? Let's think step by step."
    )
    assert build_task_prompt("box_qa_short", "Is it red?", index=0) == "Please briefly answer: Is it red?"


def test_an_agent_task_already_in_quotes_is_not_quoted_twice():
    assert (
        build_task_prompt("agent", '"Open settings"', index=0)
        == 'Can you advise me on how to "Open settings"?'
    )


def test_a_seeded_random_choice_is_reproducible_and_covers_the_list():
    first = [build_task_prompt("agent", "x", rng=seed) for seed in range(50)]
    assert first == [build_task_prompt("agent", "x", rng=seed) for seed in range(50)]
    generator = random.Random(0)
    seen = {choose_template("box_qa_short", rng=generator) for _ in range(2000)}
    assert seen == set(templates("box_qa_short"))


def test_several_boxes_fill_a_box2caption_template_as_one_group():
    prompt = build_task_prompt("box2caption", [Box(1, 2, 3, 4), Box(5, 6, 7, 8)], index=0)
    assert (
        prompt == "Can you give me a description of the region [[001,002,003,004;005,006,007,008]] in image?"
    )


def test_an_unknown_kind_is_an_error_listing_the_kinds():
    with pytest.raises(ValueError, match="unknown template kind 'grounding'; expected one of: caption2box"):
        build_task_prompt("grounding", "x")


def test_an_index_out_of_range_is_an_error_naming_the_list_size():
    with pytest.raises(ValueError, match=r"template index 108 is out of range for 'agent' \(108 templates\)"):
        build_task_prompt("agent", "x", index=108)


def test_a_missing_or_unexpected_task_is_an_error():
    with pytest.raises(ValueError, match="needs a task to replace <TASK>"):
        build_task_prompt("agent", index=0)
    with pytest.raises(ValueError, match="takes no task"):
        build_task_prompt("caption_with_box", "cats", index=0)
    with pytest.raises(ValueError, match="needs a non-empty task"):
        build_task_prompt("caption2box", "  ", index=0)
