"""Every malformed request gets a 4xx with OpenAI's error shape; the server stays up."""

from __future__ import annotations

import base64
import io
import os

import httpx
import pytest
from PIL import Image

from tests.frontends.server.helpers import IMAGE_URL


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _huge_image_url() -> str:
    # 20000 x 20000 pixels, but a 1-bit all-black PNG compresses to a few kilobytes.
    return _png_data_url(Image.new("1", (20000, 20000)))


def _user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def _image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


TEXT = {"type": "text", "text": "What is it?"}

BAD_BODIES = {
    "bad base64": ({"messages": _user(TEXT, _image("data:image/png;base64,@@@notbase64@@@"))}, 400, "base64"),
    "non-image bytes": (
        {
            "messages": _user(
                TEXT, _image("data:image/png;base64," + base64.b64encode(b"hello world" * 10).decode())
            )
        },
        400,
        "image",
    ),
    "truncated image": ({"messages": _user(TEXT, _image(IMAGE_URL[: len(IMAGE_URL) // 2]))}, 400, "image"),
    "huge image": ({"messages": _user(TEXT, _image(_huge_image_url()))}, 400, "pixels"),
    "file url": (
        {"messages": _user(TEXT, _image("file:///etc/passwd"))},
        400,
        "file:// image URLs are disabled",
    ),
    "http url": (
        {"messages": _user(TEXT, _image("http://127.0.0.1:9/x.png"))},
        400,
        "http(s) image URLs are disabled",
    ),
    "ftp url": ({"messages": _user(TEXT, _image("ftp://host/x.png"))}, 400, "unsupported URL scheme"),
    "non-image media type": (
        {"messages": _user(TEXT, _image("data:text/plain;base64,aGVsbG8="))},
        400,
        "not an image",
    ),
    "missing messages": ({"model": "m"}, 400, "messages must be a non-empty list"),
    "empty messages": ({"messages": []}, 400, "messages must be a non-empty list"),
    "messages not a list": ({"messages": "hi"}, 400, "messages must be a non-empty list"),
    "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role must be one of"),
    "content is a number": ({"messages": [{"role": "user", "content": 42}]}, 400, "content must be a string"),
    "unknown part type": ({"messages": _user({"type": "audio", "data": "x"})}, 400, "'audio'"),
    "text part without text": ({"messages": _user({"type": "text"})}, 400, "text must be a string"),
    "image part without url": (
        {"messages": _user({"type": "image_url", "image_url": {}})},
        400,
        "non-empty string",
    ),
    "last message from assistant": (
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        400,
        "last message",
    ),
    "temperature is a string": (
        {"messages": _user(TEXT), "temperature": "hot"},
        400,
        "temperature must be a number",
    ),
    "temperature out of range": ({"messages": _user(TEXT), "temperature": 7}, 400, "temperature must be in"),
    "top_p zero": ({"messages": _user(TEXT), "top_p": 0}, 400, "top_p must be in"),
    "max_tokens negative": ({"messages": _user(TEXT), "max_tokens": -3}, 400, "max_tokens must be >= 1"),
    "max_tokens is a float": (
        {"messages": _user(TEXT), "max_tokens": 2.5},
        400,
        "max_tokens must be an integer",
    ),
    "n is two": ({"messages": _user(TEXT), "n": 2}, 400, "n must be 1"),
    "stream not boolean": ({"messages": _user(TEXT), "stream": "yes"}, 400, "stream must be a boolean"),
    "too many stop strings": ({"messages": _user(TEXT), "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
    "stop is a number": ({"messages": _user(TEXT), "stop": 5}, 400, "stop must be"),
    "body is a list": ([1, 2, 3], 400, "must be a JSON object"),
    "prompt too long": ({"messages": _user({"type": "text", "text": "word " * 5000})}, 400, "context length"),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_malformed_request_gets_a_4xx_with_an_openai_error(server, name):
    body, status, message = BAD_BODIES[name]
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"]
    assert server.is_alive()


def test_invalid_json_is_a_400(server):
    response = httpx.post(
        server.url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_an_image_over_the_byte_limit_is_a_413(server):
    payload = base64.b64encode(os.urandom(21 << 20)).decode()  # 21 MiB decoded; the limit is 20 MiB
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"messages": _user(TEXT, _image("data:image/png;base64," + payload))},
        timeout=120,
    )
    assert response.status_code == 413
    assert "larger than 20971520 bytes" in response.json()["error"]["message"]


def test_a_body_over_the_request_limit_is_a_413(server):
    body = b'{"messages": "' + b"x" * (33 << 20) + b'"}'
    response = httpx.post(
        server.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=120,
    )
    assert response.status_code == 413
    assert server.is_alive()


def test_unknown_path_and_method_use_the_error_shape(server):
    missing = httpx.get(server.url + "/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = httpx.get(server.url + "/v1/chat/completions")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
