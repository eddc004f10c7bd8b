"""Parsing and validating a chat-completions request body into what generation needs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.errors import invalid
from cogvlm.frontends.server.messages import parse_conversation

MAX_STOP_STRINGS = 4
MAX_MODEL_CHARS = 256
# Each decoded token compares the text's tail with every prefix of every stop string.
MAX_STOP_CHARS = 256
MAX_TOKENS = 2**31 - 1  # a request's cap; the context length is what bounds an answer
# Logits are divided by these: smaller values overflow float32 and leave nothing to sample.
MIN_TEMPERATURE = 1e-5
MIN_REPETITION_PENALTY = 0.01
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


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
    if not math.isfinite(value):
        raise invalid(f"{name} must be a finite number, got {value}", name)
    if value < low or value > high or (low_open and value == low):
        bound = "(" if low_open else "["
        raise invalid(f"{name} must be in {bound}{low}, {high}], got {value}", name)
    return float(value)


def _temperature(body: dict) -> float | None:
    temperature = _number(body, "temperature", None, 0.0, 2.0)
    if temperature is not None and 0 < temperature < MIN_TEMPERATURE:
        raise invalid(
            f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, 2.0], got {temperature}", "temperature"
        )
    return temperature


def _integer(body: dict, name: str, minimum: int, maximum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{name} must be an integer, got {type(value).__name__}", name)
    if value < minimum:
        raise invalid(f"{name} must be >= {minimum}, got {value}", name)
    if value > maximum:
        raise invalid(f"{name} must be <= {maximum}, got {value}", name)
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
    longest = max(len(item) for item in stops)
    if longest > MAX_STOP_CHARS:
        raise invalid(f"a stop string may have at most {MAX_STOP_CHARS} characters, got {longest}", "stop")
    return tuple(stops)


def _model(body: dict, config: ServerConfig) -> str:
    model = body.get("model", config.model_id)
    if not isinstance(model, str):
        raise invalid("model must be a string", "model")
    if len(model) > MAX_MODEL_CHARS:  # echoed in every streamed chunk
        raise invalid(f"model may have at most {MAX_MODEL_CHARS} characters, got {len(model)}", "model")
    return model


def _stream_settings(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream must be a boolean", "stream")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise invalid("stream_options must be an object", "stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise invalid("stream_options.include_usage must be a boolean", "stream_options.include_usage")
    return stream, include_usage


def parse_chat_request(body: object, config: ServerConfig) -> ChatRequest:
    """Validate a request body; every problem raises a 4xx `APIError` that names the field.

    The scalar fields are checked first; the one image is decoded last, after everything else passed.
    """
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    model = _model(body, config)
    n = _integer(body, "n", 1, MAX_TOKENS)
    if n not in (None, 1):
        raise invalid(f"n must be 1 (one choice per request), got {n}", "n")
    stream, include_usage = _stream_settings(body)
    max_tokens = _integer(body, "max_completion_tokens", 1, MAX_TOKENS)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, MAX_TOKENS)
    sampling = dict(
        temperature=_temperature(body),
        top_p=_number(body, "top_p", None, 0.0, 1.0, True),
        repetition_penalty=_number(body, "repetition_penalty", None, MIN_REPETITION_PENALTY, 10.0),
        seed=_integer(body, "seed", *SEED_RANGE),
    )
    stop = _stop(body)
    conversation = parse_conversation(body.get("messages"), config)
    return ChatRequest(
        model=model,
        query=conversation.query,
        history=conversation.history,
        image=conversation.image,
        max_tokens=max_tokens,
        stop=stop,
        stream=stream,
        include_usage=include_usage,
        **sampling,
    )
