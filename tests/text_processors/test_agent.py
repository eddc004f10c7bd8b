"""CogAgent GUI-agent replies parsed into plan, next action and grounded operation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cogvlm.text_processors.agent import parse_agent_reply, parse_operation, split_plan_steps
from cogvlm.text_processors.grounding import Box, Point

README_PLAN = (
    "Plan: 1. Type 'CogVLM' into the Google search bar. 2. Review the search results that appear. "
    "3. Click on a relevant result to read more about CogVLM or access further resources.\n"
    "Next Action: Move the cursor to the Google search bar, and type 'CogVLM' into it."
)
README_GROUNDED = (
    README_PLAN + "\nGrounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]"
)


def test_the_readme_grounded_reply_is_parsed():
    reply = parse_agent_reply(README_GROUNDED)
    assert reply.plan_steps == (
        "Type 'CogVLM' into the Google search bar.",
        "Review the search results that appear.",
        "Click on a relevant result to read more about CogVLM or access further resources.",
    )
    assert reply.next_action == "Move the cursor to the Google search bar, and type 'CogVLM' into it."
    operation = reply.operation
    assert (operation.element_type, operation.element_text) == ("combobox", "Search")
    assert (operation.action_type, operation.typed_text) == ("TYPE", "CogVLM")
    assert operation.boxes == (Box(212, 498, 787, 564),)
    assert operation.label() == "[combobox] Search -> TYPE: CogVLM"


def test_the_readme_reply_without_grounding_has_no_operation():
    reply = parse_agent_reply(README_PLAN)
    assert reply.plan.startswith("1. Type 'CogVLM'") and len(reply.plan_steps) == 3
    assert reply.operation is None
    assert reply.grounded_phrases() == []


def test_the_chinese_readme_spacing_variant_gives_the_same_operation():
    # README_zh writes two spaces after the element type.
    spaced = parse_operation("[combobox]  Search -> TYPE: CogVLM at the box [[212,498,787,564]]")
    assert spaced.element_text == "Search" and spaced.typed_text == "CogVLM"


def test_a_click_has_no_typed_text():
    operation = parse_operation("[button] Sign in -> CLICK at the box [[100,200,300,250]]")
    assert (operation.action_type, operation.typed_text, operation.element_text) == ("CLICK", None, "Sign in")


def test_a_phone_tap_with_a_point_and_the_short_action_label():
    reply = parse_agent_reply("Action: Touch the play button.\nGrounded Operation: tap [[780,862]]")
    assert reply.next_action == "Touch the play button."
    assert reply.operation.action_type == "TAP" and reply.operation.targets == (Point(780, 862),)
    assert reply.grounded_phrases()[0].phrase == "tap"


def test_an_operation_without_target_keeps_its_action():
    operation = parse_operation("SCROLL DOWN")
    assert operation.action_type == "SCROLL_DOWN" and operation.targets == ()


def test_a_plan_without_numbers_is_one_step():
    assert split_plan_steps("Open the menu and pick settings.") == ("Open the menu and pick settings.",)


def test_sections_may_come_on_one_line_and_out_of_order():
    reply = parse_agent_reply(
        "Grounded Operation: [link] Docs -> CLICK at the box [[1,2,3,4]] Plan: 1. a. 2. b."
    )
    assert reply.plan_steps == ("a.", "b.")
    assert reply.operation.element_text == "Docs" and reply.operation.boxes == (Box(1, 2, 3, 4),)


agent_like_text = st.lists(
    st.sampled_from(
        [
            "Plan:",
            "Next Action:",
            "Action:",
            "Grounded Operation:",
            "[",
            "]",
            "[[",
            "]]",
            "->",
            ":",
            "TYPE",
            "CLICK",
            "at the box",
            "1.",
            "2. ",
            "999",
            ",",
            ";",
            " ",
            "\n",
            "é",
            "\x00",
        ]
    )
    | st.text(max_size=6),
    max_size=50,
).map("".join)


@given(agent_like_text)
def test_the_reply_parser_never_raises_and_keeps_the_text(text):
    reply = parse_agent_reply(text)
    assert reply.text == text
    if reply.operation is not None:
        assert all(0 <= value <= 999 for box in reply.operation.boxes for value in (box.x1, box.x2))
        assert isinstance(reply.operation.label(), str)


@given(st.text(max_size=300))
def test_the_reply_parser_never_raises_on_random_unicode(text):
    assert parse_agent_reply(text).text == text
