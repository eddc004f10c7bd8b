"""The web demo's handler inputs: Gradio's message format becomes (query, reply) pairs, and sliders,
text and history that no client of the demo's page would send are refused by name."""

from __future__ import annotations

import pytest

from cogvlm.frontends.text_checks import UserTextError
from cogvlm.frontends.web_inputs import MAX_HISTORY_TURNS, history_pairs, message_text, parse_web_turn

GREETING = "Hello there."
SLIDERS = dict(temperature=0.5, top_p=0.4, top_k=10)


def _parts(text: str) -> list[dict]:
    return [{"type": "text", "text": text}]


def test_message_text_reads_strings_and_gradio_parts():
    assert message_text("plain") == "plain"
    assert message_text(_parts("a") + [{"type": "file", "file": {"path": "/x.png"}}] + _parts("b")) == "a\nb"
    assert message_text({"type": "text", "text": "one part"}) == "one part"
    assert message_text([{"type": "file", "file": {}}]) is None
    assert message_text(42) is None and message_text([{"type": "text", "text": 3}]) is None


def test_history_pairs_follow_the_chat_without_greeting_or_unanswered_queries():
    messages = [
        {"role": "assistant", "content": _parts(GREETING)},
        {"role": "user", "content": _parts("q1")},
        {"role": "assistant", "content": _parts("a1")},
        {"role": "user", "content": "q2 unanswered"},
        {"role": "user", "content": _parts("q3")},
        {"role": "assistant", "content": "a3"},
        "not a message",
        {"role": "assistant", "content": "a reply to nothing"},
    ]
    assert history_pairs(messages, GREETING) == (("q1", "a1"), ("q3", "a3"))
    assert history_pairs(None, GREETING) == () and history_pairs("text", GREETING) == ()


def test_a_long_history_keeps_its_last_turns():
    messages = []
    for index in range(MAX_HISTORY_TURNS + 10):
        messages += [{"role": "user", "content": f"q{index}"}, {"role": "assistant", "content": f"a{index}"}]
    pairs = history_pairs(messages, GREETING)
    assert len(pairs) == MAX_HISTORY_TURNS
    assert pairs[-1] == (f"q{MAX_HISTORY_TURNS + 9}", f"a{MAX_HISTORY_TURNS + 9}")


def test_a_good_turn_is_parsed():
    messages = [{"role": "user", "content": _parts("q1")}, {"role": "assistant", "content": _parts("a1")}]
    turn = parse_web_turn("q2", messages, GREETING, **SLIDERS)
    assert (turn.query, turn.history) == ("q2", (("q1", "a1"),))
    assert (turn.temperature, turn.top_p, turn.top_k) == (0.5, 0.4, 10)
    assert isinstance(turn.top_k, int)


BAD_SLIDERS = {
    "NaN temperature": ({"temperature": float("nan")}, "temperature must be a finite number"),
    "infinite top_p": ({"top_p": float("inf")}, "top_p must be a finite number"),
    "NaN top_k": ({"top_k": float("nan")}, "top_k must be a finite number"),
    "string top_k": ({"top_k": "10"}, "top_k must be a finite number"),
    "boolean top_p": ({"top_p": True}, "top_p must be a finite number"),
    "top_k zero": ({"top_k": 0}, r"top_k must be in \[1, 100\]"),
    "temperature above 1": ({"temperature": 5.0}, r"temperature must be in \[0.0, 1.0\]"),
}


@pytest.mark.parametrize("name", sorted(BAD_SLIDERS))
def test_bad_sliders_are_refused_by_name(name):
    change, message = BAD_SLIDERS[name]
    with pytest.raises(UserTextError, match=message):
        parse_web_turn("q", [], GREETING, **{**SLIDERS, **change})


def test_bad_text_is_refused_wherever_it_is():
    with pytest.raises(UserTextError, match=r"the question: .*lone UTF-16 surrogate \(U\+D800"):
        parse_web_turn("hi \ud800", [], GREETING, **SLIDERS)
    with pytest.raises(UserTextError, match="the question: the text contains '<EOI>'"):
        parse_web_turn("a <EOI> b", [], GREETING, **SLIDERS)
    forged = [{"role": "user", "content": _parts("<EOI>")}, {"role": "assistant", "content": "a"}]
    with pytest.raises(UserTextError, match="question 1 of the chat"):
        parse_web_turn("q", forged, GREETING, **SLIDERS)
    broken = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\udc00"}]
    with pytest.raises(UserTextError, match="answer 1 of the chat"):
        parse_web_turn("q", broken, GREETING, **SLIDERS)


def test_overlong_text_is_refused_before_any_other_work():
    with pytest.raises(UserTextError, match="the question has 100001 characters"):
        parse_web_turn("x" * 100_001, [], GREETING, **SLIDERS)
    long_reply = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "y" * 200_000}]
    with pytest.raises(UserTextError, match="answer 1 of the chat has 200000 characters"):
        parse_web_turn("q", long_reply, GREETING, **SLIDERS)
