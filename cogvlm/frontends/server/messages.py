"""The `messages` of a chat request as the model's turns: system text, (query, reply) pairs, one image.

Linear in the request's size: consecutive messages of one role are collected and joined once, and of all
`image_url` parts only the last one is fetched and decoded (the model sees one image per conversation);
the others are only checked for an allowed URL scheme.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.errors import invalid
from cogvlm.frontends.server.images import check_url_scheme, image_from_url
from cogvlm.frontends.text_checks import UserTextError, check_user_text

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    """The prompt's parts: earlier (query, reply) turns, the last query, and the image, if any."""

    history: tuple[tuple[str, str], ...]
    query: str
    image: Image.Image | None


@dataclass(frozen=True)
class _ImageRef:
    url: str
    param: str


def _text(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"{param} must be a string", param)
    try:
        check_user_text(value, param)
    except UserTextError as error:
        raise invalid(str(error), param) from None
    return value


def _content(message: dict, index: int, config: ServerConfig) -> tuple[str, _ImageRef | None]:
    """The text of a message and a reference to its last image, if any."""
    param = f"messages[{index}].content"
    content = message.get("content")
    if isinstance(content, str):
        return _text(content, param), None
    if not isinstance(content, list):
        raise invalid(f"{param} must be a string or a list of content parts", param)
    texts, image = [], None
    for part_index, part in enumerate(content):
        part_param = f"{param}[{part_index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(_text(part.get("text"), f"{part_param}.text"))
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            image = _ImageRef(url, f"{part_param}.image_url.url")
            check_url_scheme(image.url, image.param, config)
        else:
            raise invalid(
                f"{part_param} must be an object of type 'text' or 'image_url', got {str(kind)[:40]!r}",
                part_param,
            )
    return " ".join(texts), image


def _role(message: object, index: int) -> str:
    role = message.get("role") if isinstance(message, dict) else None
    if not isinstance(role, str) or role not in ROLES:
        shown = role[:40] if isinstance(role, str) else role
        raise invalid(
            f"messages[{index}].role must be one of {ROLES}, got {shown!r}", f"messages[{index}].role"
        )
    return role


def _turns(messages: object, config: ServerConfig):
    """(system texts, [(role, [texts])], last image reference): same-role runs merged, in one pass."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list", "messages")
    if len(messages) > config.max_messages:
        raise invalid(
            f"messages has {len(messages)} entries; this server accepts at most {config.max_messages}",
            "messages",
            "too_many_messages",
        )
    system, turns, image = [], [], None
    for index, message in enumerate(messages):
        role = _role(message, index)
        text, message_image = _content(message, index, config)
        image = message_image or image  # one image per conversation: the last one given
        if role in ("system", "developer"):
            system.append(text)
        elif turns and turns[-1][0] == role:
            turns[-1][1].append(text)
        else:
            turns.append((role, [text]))
    return system, turns, image


def parse_conversation(messages: object, config: ServerConfig) -> Conversation:
    """Validate `messages` and decode the one image the model will see."""
    system, runs, image = _turns(messages, config)
    turns = [(role, "\n".join(texts)) for role, texts in runs]
    if not turns or turns[-1][0] != "user":
        raise invalid("the last message must come from the user", "messages")
    if turns[0][0] != "user":
        raise invalid(
            "the conversation must start with a user message (after any system message)", "messages"
        )
    if system:
        # The prompt formats have no system slot: the instructions open the first user turn.
        turns[0] = ("user", "\n".join(system) + "\n" + turns[0][1])
    pairs = tuple((turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2))
    decoded = image_from_url(image.url, image.param, config) if image is not None else None
    return Conversation(pairs, turns[-1][1], decoded)
