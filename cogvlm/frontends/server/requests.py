"""Parsing and validating a chat-completions request body into what generation needs."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.errors import invalid
from cogvlm.frontends.server.images import image_from_url

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_STRINGS = 4


@dataclass(frozen=True)
class ChatRequest:
    """One validated request: the conversation as (query, response) turns plus the sampling settings."""

    model: str
    query: str
    history: tuple[tuple[str, str], ...]
    image: Image.Image | None
    temperature: float | None = None  # None: the model's default sampling (`CogVLM.generation_config`)
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float | None = None
    stream: bool = False
    include_usage: bool = False


def _number(
    body: dict, name: str, default: float | None, low: float, high: float, low_open: bool = False
) -> float | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"{name} must be a number, got {type(value).__name__}", name)
    if value < low or value > high or (low_open and value == low):
        bound = "(" if low_open else "["
        raise invalid(f"{name} must be in {bound}{low}, {high}], got {value}", name)
    return float(value)


def _integer(body: dict, name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer, got {type(value).__name__}", name)
    if value < minimum:
        raise invalid(f"{name} must be >= {minimum}, got {value}", name)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(item, str) and item for item in stops):
        raise invalid("stop must be a non-empty string or a list of non-empty strings", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise invalid(f"stop accepts at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop")
    return tuple(stops)


def _content(message: dict, index: int, config: ServerConfig) -> tuple[str, Image.Image | None]:
    """The text of a message and its last image, if any."""
    param = f"messages[{index}].content"
    content = message.get("content")
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise invalid(f"{param} must be a string or a list of content parts", param)
    texts, image = [], None
    for part_index, part in enumerate(content):
        part_param = f"{param}[{part_index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise invalid(f"{part_param}.text must be a string", f"{part_param}.text")
            texts.append(part["text"])
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            image = image_from_url(url, f"{part_param}.image_url.url", config)
        else:
            raise invalid(
                f"{part_param} must be an object of type 'text' or 'image_url', got {kind!r}", part_param
            )
    return " ".join(texts), image


def _conversation(messages: object, config: ServerConfig):
    """(system text, [(role, text)], last image) from the messages list."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list", "messages")
    system, turns, image = [], [], None
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise invalid(
                f"messages[{index}].role must be one of {ROLES}, got {role!r}", f"messages[{index}].role"
            )
        text, message_image = _content(message, index, config)
        image = message_image or image  # one image per conversation: the last one given
        if message["role"] in ("system", "developer"):
            system.append(text)
        elif turns and turns[-1][0] == message["role"]:
            turns[-1] = (message["role"], turns[-1][1] + "\n" + text)
        else:
            turns.append((message["role"], text))
    return "\n".join(system), turns, image


def _turns_to_history(system: str, turns: list[tuple[str, str]]) -> tuple[tuple[tuple[str, str], ...], str]:
    if not turns or turns[-1][0] != "user":
        raise invalid("the last message must come from the user", "messages")
    if turns[0][0] != "user":
        raise invalid(
            "the conversation must start with a user message (after any system message)", "messages"
        )
    if system:
        # The prompt formats have no system slot: the instructions open the first user turn.
        turns[0] = ("user", system + "\n" + turns[0][1])
    pairs = tuple((turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2))
    return pairs, turns[-1][1]


def parse_chat_request(body: object, config: ServerConfig) -> ChatRequest:
    """Validate a request body; every problem raises a 4xx `APIError` that names the field."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    model = body.get("model", config.model_id)
    if not isinstance(model, str):
        raise invalid("model must be a string", "model")
    n = _integer(body, "n", 1)
    if n not in (None, 1):
        raise invalid(f"n must be 1 (one choice per request), got {n}", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise invalid("stream_options must be an object", "stream_options")
    system, turns, image = _conversation(body.get("messages"), config)
    history, query = _turns_to_history(system, turns)
    max_tokens = _integer(body, "max_completion_tokens", 1) or _integer(body, "max_tokens", 1)
    return ChatRequest(
        model=model,
        query=query,
        history=history,
        image=image,
        temperature=_number(body, "temperature", None, 0.0, 2.0),
        top_p=_number(body, "top_p", None, 0.0, 1.0, True),
        max_tokens=max_tokens,
        stop=_stop(body),
        seed=_integer(body, "seed", -(2**63)),
        repetition_penalty=_number(body, "repetition_penalty", None, 0.0, 10.0, True),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
    )
