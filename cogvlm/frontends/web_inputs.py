"""What the web demo's event handler receives, checked before any work: the query, the chat so far and
the sampling sliders. Gradio's API lets any client send these, so nothing is trusted: NaN slider values,
a missing text, a history in Gradio's message-parts format or in any other shape, lone surrogates and
forged image markers are turned into a clear error or a well-formed turn."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from cogvlm.frontends.text_checks import UserTextError, check_user_text

# Turns of history the demo keeps; older ones are dropped (the context could not hold them anyway).
MAX_HISTORY_TURNS = 64
# Characters of one question or chat message; far beyond any model's context, and it bounds the work
# done before the context check (Gradio's API accepts text of any length).
MAX_TEXT_CHARS = 100_000
SLIDERS = {"temperature": (0.0, 1.0), "top_p": (0.0, 1.0), "top_k": (1, 100)}
Ranges = Mapping[str, tuple[float, float]]


@dataclass(frozen=True)
class WebTurn:
    """One checked turn: the query, the earlier (query, reply) pairs and the sampling settings."""

    query: str
    history: tuple[tuple[str, str], ...]
    temperature: float
    top_p: float
    top_k: int


def message_text(content: object) -> str | None:
    """The text of a chat message: a string, or Gradio's list of parts ({"type": "text", "text": ...}).

    None for content without text (a file, a component).
    """
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return None
    texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
    texts = [text for text in texts if isinstance(text, str)]
    return "\n".join(texts) if texts else None


def history_pairs(messages: object, greeting: str) -> tuple[tuple[str, str], ...]:
    """The chat's (query, reply) pairs in order, the greeting and unanswered queries left out."""
    if not isinstance(messages, list):
        return ()
    pairs, query = [], None
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        text = message_text(message.get("content")) if isinstance(message, dict) else None
        if text is None or text == greeting:
            continue
        if role == "user":
            query = text
        elif role == "assistant" and query is not None:
            pairs.append((query, text))
            query = None
    return tuple(pairs[-MAX_HISTORY_TURNS:])


def slider_ranges(start: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """The sliders' ranges, widened to hold their `start` values (a model's defaults may lie outside)."""
    return {name: (min(low, start[name]), max(high, start[name])) for name, (low, high) in SLIDERS.items()}


def _slider(name: str, value: object, ranges: Ranges) -> float:
    low, high = ranges[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserTextError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise UserTextError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def _check_text(text: str, where: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise UserTextError(f"{where} has {len(text)} characters; at most {MAX_TEXT_CHARS} are accepted")
    check_user_text(text, where)


def parse_web_turn(
    text: str, messages: object, greeting: str, ranges: Ranges = SLIDERS, **sliders: object
) -> WebTurn:
    """Check a non-empty query, the chat so far and the sliders (temperature, top_p, top_k) against
    their `ranges`."""
    _check_text(text, "the question")
    history = history_pairs(messages, greeting)
    for index, (query, reply) in enumerate(history):
        _check_text(query, f"question {index + 1} of the chat")
        _check_text(reply, f"answer {index + 1} of the chat")
    values = {name: _slider(name, sliders[name], ranges) for name in SLIDERS}
    return WebTurn(text, history, float(values["temperature"]), float(values["top_p"]), int(values["top_k"]))
