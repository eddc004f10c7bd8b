"""Reading a request body under a byte limit and parsing it as bounded JSON.

The body is read chunk by chunk, so an oversized chunked upload is refused as soon as it passes the limit,
never buffered whole. The JSON parser refuses what would otherwise end in an internal error further on:
`NaN`/`Infinity` literals, integers of absurd length, deep nesting and lone UTF-16 surrogates (which no
UTF-8 encoder, tokenizer or JSON response can carry).
"""

from __future__ import annotations

import asyncio
import json

from starlette.requests import ClientDisconnect, Request

from cogvlm.frontends.server.errors import APIError, invalid
from cogvlm.frontends.text_checks import lone_surrogate

# The longest integer any field accepts is a 64-bit seed (20 digits); longer literals are refused while
# parsing, before Python's own 4300-digit guard or a slow conversion sees them.
MAX_INTEGER_DIGITS = 32
MAX_DEPTH = 32  # a chat request nests 6 levels (body, messages, message, content, part, image_url)
# JSON objects and arrays a body may hold; the most messages a server accepts need a few each, and text
# with that many brackets would not fit any context.
MAX_CONTAINERS = 100_000


def too_large(limit: int) -> APIError:
    """413 for a body over `limit` bytes; the connection closes (the rest of the body is never read)."""
    return APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


class BodyBudget:
    """The bytes of all request bodies being read and parsed at once; beyond `limit` a body gets a 503.

    Only the event loop takes and gives (no lock): bodies are read there.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        """Count `size` more bytes, or refuse them (counting nothing)."""
        if self.used + size > self.limit:
            raise APIError(
                503,
                f"the server is reading {self.used} bytes of other requests (at most {self.limit}); "
                "retry later",
                type="server_error",
                code="server_busy",
            )
        self.used += size

    def give(self, size: int) -> None:
        """Release `size` bytes taken before."""
        self.used -= size


async def read_body(request: Request, limit: int, timeout_s: float, budget: BodyBudget) -> bytes:
    """The whole body, read chunk by chunk within `timeout_s`, counted in `budget`.

    A 413 as soon as more than `limit` bytes arrived, a 408 when the body is too slow; on success the
    caller gives `len(body)` back to the budget when done with it.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise too_large(limit)
                budget.take(len(chunk))
                body += chunk
    except TimeoutError:
        budget.give(len(body))
        message = f"the request body did not arrive within {timeout_s:g} s"
        raise APIError(408, message, code="body_timeout") from None
    except ClientDisconnect:
        budget.give(len(body))
        raise APIError(400, "the client closed the connection before the body ended") from None
    except APIError:
        budget.give(len(body))
        raise
    return bytes(body)


def _reject_constant(name: str) -> float:
    raise invalid(f"the request body is not valid JSON: {name} is not a JSON number")


def _bounded_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise invalid(
            f"the request body has an integer of {digits} digits; at most {MAX_INTEGER_DIGITS} are accepted"
        )
    return int(literal)


def parse_json(raw: bytes) -> object:
    """The decoded body; malformed, too deep or unrepresentable JSON is a 400 naming the problem."""
    # Each JSON object costs Python ~20 times its bytes: count them (over-counting brackets inside
    # strings) before building any.
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > MAX_CONTAINERS:
        raise invalid(
            f"the request body has {containers} '{{' and '[' characters; at most {MAX_CONTAINERS} are "
            "accepted (a chat request needs a few per message)"
        )
    try:
        value = json.loads(raw, parse_constant=_reject_constant, parse_int=_bounded_int)
    except RecursionError:
        raise invalid(f"the request body nests JSON deeper than {MAX_DEPTH} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise invalid(f"the request body is not valid JSON ({error})") from None
    check_tree(value)
    return value


def check_tree(value: object) -> None:
    """Refuse nesting deeper than `MAX_DEPTH` and strings (keys included) holding lone surrogates.

    Iterative, so its cost is linear in the size of the document whatever its shape; only containers
    are stacked, and a node's path is kept as a (parent, key) chain, spelled out only for an error.
    """
    if isinstance(value, str):
        _check_text(value, None)
    stack: list[tuple[object, tuple | None, int]] = [(value, None, 1)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise invalid(f"the request body nests JSON deeper than {MAX_DEPTH} levels (at {_path(where)})")
        if isinstance(node, dict):
            for key, item in node.items():
                _check_text(key, where, is_key=True)
                _check_child(stack, item, (where, key), depth)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                _check_child(stack, item, (where, index), depth)


def _check_child(stack: list, item: object, where: tuple, depth: int) -> None:
    if isinstance(item, str):
        _check_text(item, where)
    elif isinstance(item, dict | list):
        stack.append((item, where, depth + 1))


def _path(where: tuple | None) -> str:
    """`messages[0].content` for the chain (((None, "messages"), 0), "content"); "" for the body."""
    parts = []
    while where is not None:
        where, key = where
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key[:40]}")
    return "".join(reversed(parts)).removeprefix(".")


def _check_text(text: str, where: tuple | None, is_key: bool = False) -> None:
    index = lone_surrogate(text)
    if index is not None:
        path = _path(where) or "the body"
        raise invalid(
            f"{path}: {'a key' if is_key else 'the string'} holds a lone UTF-16 surrogate "
            f"(U+{ord(text[index]):04X} at index {index}), which is not a Unicode character",
            _path(where) or None,
            "invalid_unicode",
        )
