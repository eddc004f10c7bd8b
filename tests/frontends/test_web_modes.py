"""What the web demo shows besides the chat: the agent prompt, drawn boxes and the parsed action."""

from __future__ import annotations

from PIL import Image

from cogvlm.frontends.web import grounding_outputs, query_for_mode

AGENT_REPLY = (
    "Plan: 1. Type 'CogVLM' into the search box. 2. Press enter."
    " Next Action: Type 'CogVLM' into the search box."
    " Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box [[212,498,787,564]]"
)


def test_agent_mode_quotes_the_task_and_asks_for_grounding():
    assert (
        query_for_mode("Agent", "Search for CogVLM")
        == 'What steps do I need to take to "Search for CogVLM"?(with grounding)'
    )
    assert query_for_mode("Chat", "What is this?") == "What is this?"


def test_agent_reply_gives_a_drawn_box_and_the_parsed_operation():
    image = Image.new("RGB", (200, 100), "white")
    drawn, action = grounding_outputs(image, AGENT_REPLY, "Agent")
    assert drawn is not None and drawn.size == image.size
    assert drawn.getpixel((int(0.212 * 200), int(0.53 * 100))) != (255, 255, 255)  # the box's left edge
    assert "[combobox] Search -> TYPE: CogVLM" in action
    assert action.startswith("Type 'CogVLM' into the search box.")


def test_grounding_mode_draws_only_when_the_reply_has_boxes():
    image = Image.new("RGB", (100, 100), "white")
    drawn, action = grounding_outputs(image, "the red ball [[100,100,500,500]]", "Grounding")
    assert drawn is not None and action == ""
    assert grounding_outputs(image, "no boxes here", "Grounding") == (None, "")
    assert grounding_outputs(image, "the red ball [[100,100,500,500]]", "Chat") == (None, "")
