"""Golden expectations and request builders for the server tests."""

from __future__ import annotations

import base64

from tests.golden import golden_dir, load_json

IMAGE_BYTES = (golden_dir() / "test_image.png").read_bytes()
IMAGE_URL = "data:image/png;base64," + base64.b64encode(IMAGE_BYTES).decode()


def golden_case(name: str) -> tuple[dict, dict]:
    """The golden prompt and generation of a CogVLM case."""
    return (
        load_json(golden_dir() / "cogvlm" / "text_inputs.json")[name],
        load_json(golden_dir() / "cogvlm" / "generation.json")[name],
    )


def messages_for(prompt: dict, image_url: str = IMAGE_URL) -> list[dict]:
    """OpenAI messages equivalent to a golden prompt: the image in the first user turn, then the history."""
    turns = [*prompt["history"], [prompt["query"], None]]
    messages = []
    for index, (query, response) in enumerate(turns):
        content = [{"type": "text", "text": query}]
        if index == 0:
            content.append({"type": "image_url", "image_url": {"url": image_url}})
        messages.append({"role": "user", "content": content})
        if response is not None:
            messages.append({"role": "assistant", "content": response})
    return messages
