"""Golden expectations and request builders for the server tests."""

from __future__ import annotations

import base64

from tests.golden import find_case, generations, golden_dir, greedy_cases, prompts

# The version the test servers run (`--version`): golden cases of other versions have other prompts.
SERVED_VERSION = "chat_old"
IMAGE_BYTES = (golden_dir() / "test_image.png").read_bytes()
IMAGE_URL = "data:image/png;base64," + base64.b64encode(IMAGE_BYTES).decode()


def golden_case(name: str) -> tuple[dict, dict]:
    """The golden prompt and generation of a CogVLM case."""
    return prompts(golden_dir() / "cogvlm")[name], generations(golden_dir() / "cogvlm")[name]


def served_cases() -> list[str]:
    """The CogVLM greedy cases of the served version, sorted by name."""
    model_dir = golden_dir() / "cogvlm"
    return [name for name in greedy_cases(model_dir) if prompts(model_dir)[name]["version"] == SERVED_VERSION]


def served_case() -> str:
    """The first served-version case; skips the test when the set has none."""
    return find_case(
        golden_dir() / "cogvlm", f"of version {SERVED_VERSION}", lambda p, g: p["version"] == SERVED_VERSION
    )


def first_and_last_served() -> tuple[str, str]:
    """The first and the last served-version case (different prompts when the set has two or more)."""
    names = served_cases() or [served_case()]  # served_case skips the test when there is none
    return names[0], names[-1]


def finish_reason(generation: dict, max_tokens: int) -> str:
    """The OpenAI finish reason of a greedy reply capped at `max_tokens`: "stop" when the reference's
    continuation ended on its end token within the cap."""
    ended = generation["stopped_on_eos"] and len(generation["new_token_ids"]) <= max_tokens
    return "stop" if ended else "length"


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
