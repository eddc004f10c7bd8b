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

# The form SPEC 4.4 documents for each reference list; our lists start with it.
DOCUMENTED_FIRST_ENTRIES = {
    "caption2box": "Where is <expr>?",
    "box2caption": "Can you give me a description of the region <objs> in image?",
    "caption_with_box": (
        "Can you provide a description of the image and include the coordinates [[x0,y0,x1,y1]] "
        "for each mentioned object?"
    ),
    "box_qa_reasoning": "<question> Let's think step by step.",
    "box_qa_short": "Please briefly answer: <question>",
    "agent": "What steps do I need to take to <TASK>?",
}


def test_every_kind_has_a_documented_first_entry():
    assert set(DOCUMENTED_FIRST_ENTRIES) == set(TEMPLATES)


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_each_list_is_non_empty_and_starts_with_the_documented_form(kind):
    assert len(templates(kind)) > 1
    assert templates(kind)[0] == DOCUMENTED_FIRST_ENTRIES[kind]


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_every_template_holds_its_placeholder_once(kind):
    placeholder = PLACEHOLDERS[kind]
    for template in templates(kind):
        if placeholder is None:
            assert "<" not in template, template
        else:
            assert template.count(placeholder) == 1, template


def test_every_caption_with_box_template_names_the_box_format():
    for template in templates("caption_with_box"):
        assert "[[x0,y0,x1,y1]]" in template, template


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_entries_are_unique(kind):
    entries = templates(kind)
    duplicates = sorted({entry for entry in entries if entries.count(entry) > 1})
    assert duplicates == []


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_entries_are_stripped_sentences(kind):
    # An entry may end with its placeholder ("Please briefly answer: <question>"): the question ends it.
    endings = (".", "?") + ((PLACEHOLDERS[kind],) if PLACEHOLDERS[kind] else ())
    for template in templates(kind):
        assert template == template.strip() and "  " not in template, repr(template)
        assert template.endswith(endings), template
        assert template[0].isupper() or template.startswith("<"), template


def test_the_readme_agent_prompt_is_reproduced():
    prompt = build_task_prompt("agent", "Search for CogVLM", index=0, with_grounding=True)
    assert prompt == 'What steps do I need to take to "Search for CogVLM"?(with grounding)'


def test_the_documented_grounding_prompts_are_built_from_template_zero():
    assert build_task_prompt("caption2box", "the red umbrella", index=0) == "Where is the red umbrella?"
    assert (
        build_task_prompt("box2caption", Box(86, 540, 400, 760), index=0)
        == "Can you give me a description of the region [[086,540,400,760]] in image?"
    )
    assert build_task_prompt("caption_with_box", index=0) == DOCUMENTED_FIRST_ENTRIES["caption_with_box"]


def test_first_entries_of_the_qa_lists_match_the_reference():
    assert (
        build_task_prompt("box_qa_reasoning", "Is it red?", index=0) == "Is it red? Let's think step by step."
    )
    assert build_task_prompt("box_qa_short", "Is it red?", index=0) == "Please briefly answer: Is it red?"


def test_an_agent_task_already_in_quotes_is_not_quoted_twice():
    assert (
        build_task_prompt("agent", '"Open settings"', index=0)
        == 'What steps do I need to take to "Open settings"?'
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


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_an_index_out_of_range_is_an_error_naming_the_list_size(kind):
    count = len(templates(kind))
    for index in (count, -count - 1):
        with pytest.raises(
            ValueError, match=rf"template index {index} is out of range for '{kind}' \({count} templates\)"
        ):
            choose_template(kind, index)
    assert choose_template(kind, count - 1) == templates(kind)[-1]


def test_a_missing_or_unexpected_task_is_an_error():
    with pytest.raises(ValueError, match="needs a task to replace <TASK>"):
        build_task_prompt("agent", index=0)
    with pytest.raises(ValueError, match="takes no task"):
        build_task_prompt("caption_with_box", "cats", index=0)
    with pytest.raises(ValueError, match="needs a non-empty task"):
        build_task_prompt("caption2box", "  ", index=0)
