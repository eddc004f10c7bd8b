"""Reading a request body under a byte limit and parsing it as bounded JSON.

The body is read chunk by chunk, so an oversized chunked upload is refused as soon as it passes the limit,
never buffered whole. The JSON parser refuses what would otherwise end in an internal error further on:
`NaN`/`Infinity` literals, integers of absurd length, deep nesting and lone UTF-16 surrogates (which no
UTF-8 encoder, tokenizer or JSON response can carry).
"""

from __future__ import annotations

import json
import re

from starlette.requests import ClientDisconnect, Request

from cogvlm.frontends.server.errors import APIError, invalid

# The longest integer any field accepts is a 64-bit seed (20 digits); longer literals are refused while
# parsing, before Python's own 4300-digit guard or a slow conversion sees them.
MAX_INTEGER_DIGITS = 32
MAX_DEPTH = 32  # a chat request nests 5 levels (body, messages, message, content, part, image_url)
_SURROGATE = re.compile("[\ud800-\udfff]")


def too_large(limit: int) -> APIError:
    """413 for a body over `limit` bytes; the connection closes (the rest of the body is never read)."""
    return APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, read chunk by chunk; a 413 as soon as more than `limit` bytes arrived."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(limit)
    except ClientDisconnect:
        raise APIError(400, "the client closed the connection before the body ended") from None
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

    Iterative, so its cost is linear in the size of the document whatever its shape; a node's path is
    kept as a (parent, key) chain and spelled out only for an error.
    """
    stack: list[tuple[object, tuple | None, int]] = [(value, None, 1)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise invalid(f"the request body nests JSON deeper than {MAX_DEPTH} levels (at {_path(where)})")
        if isinstance(node, str):
            _check_text(node, where)
        elif isinstance(node, dict):
            for key, item in node.items():
                _check_text(key, where, is_key=True)
                stack.append((item, (where, key), depth + 1))
        elif isinstance(node, list):
            stack.extend((item, (where, index), depth + 1) for index, item in enumerate(node))


def _path(where: tuple | None) -> str:
    """`messages[0].content` for the chain (((None, "messages"), 0), "content"); "" for the body."""
    parts = []
    while where is not None:
        where, key = where
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key[:40]}")
    return "".join(reversed(parts)).removeprefix(".")


def _check_text(text: str, where: tuple | None, is_key: bool = False) -> None:
    found = _SURROGATE.search(text)
    if found is not None:
        path = _path(where) or "the body"
        raise invalid(
            f"{path}: {'a key' if is_key else 'the string'} holds a lone UTF-16 surrogate "
            f"(U+{ord(found.group()):04X} at index {found.start()}), which is not a Unicode character",
            _path(where) or None,
            "invalid_unicode",
        )
