"""`cogvlm chat` as a person uses it: an interactive session in a pseudo-terminal, and one-shot runs."""

from __future__ import annotations

import functools
import subprocess
import sys

import pexpect
import pytest
from PIL import Image

from cogvlm import api
from cogvlm.frontends.grounding_output import draw_grounding
from cogvlm.inference.generate import GenerationConfig
from cogvlm.inference.sampling import SamplingConfig
from tests.golden import find_case, generations, golden_dir, max_new_tokens, prompts
from tests.golden_models import end_tokens

MODEL_DIR = golden_dir() / "cogvlm"
CHECKPOINT = MODEL_DIR / "sat_checkpoint"
TOKENIZER = golden_dir() / "tokenizer.model"
IMAGE = golden_dir() / "test_image.png"
# The CLI's one-shot and first turns ask a chat_old golden question without a history, with the reference's
# new-token budget; the context holds a few such turns, and far fewer tokens than the too-long input.
VERSION = "chat_old"
NEW_TOKENS = max_new_tokens(MODEL_DIR)
MAX_LENGTH = 4 * max(len(p["input_ids"]) for p in prompts(MODEL_DIR).values()) + 4 * NEW_TOKENS
TIMEOUT_S = 120
# What the CLI flags below amount to: the reference CLI's greedy sampler, capped at NEW_TOKENS.
GENERATION = GenerationConfig(
    max_length=MAX_LENGTH,
    max_new_tokens=NEW_TOKENS,
    end_token_ids=end_tokens(),
    sampling=SamplingConfig(0.8, 1, 0.4, 1.0, "reference"),
)
FLAGS = [
    "--from_pretrained", str(CHECKPOINT), "--local_tokenizer", str(TOKENIZER), "--version", VERSION,
    "--max_length", str(MAX_LENGTH), "--max_new_tokens", str(NEW_TOKENS),
]  # fmt: skip


@functools.cache
def session() -> api.CogVLM:
    return api.load(CHECKPOINT, local_tokenizer=str(TOKENIZER), version=VERSION)


def _first_turn() -> tuple[str, str]:
    """A golden question of the CLI's version without a history, and the reference's reply to it."""
    name = find_case(MODEL_DIR, f"of version {VERSION} without a history", _is_first_turn)
    return prompts(MODEL_DIR)[name]["query"], generations(MODEL_DIR)[name][
        "response_after_official_postprocess"
    ]


def _is_first_turn(prompt: dict, generation: dict) -> bool:
    return prompt["version"] == VERSION and not prompt["history"]


def _spawn(*extra: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable, ["-m", "cogvlm.cli", "chat", *FLAGS, *extra], encoding="utf-8", timeout=TIMEOUT_S
    )
    child.setecho(False)
    return child


def _ask(child: pexpect.spawn, prompt: str, answer: str) -> None:
    child.expect_exact(prompt)
    child.sendline(answer)


def _reply(child: pexpect.spawn) -> str:
    child.expect_exact("Model: ")
    child.expect(r"\r?\n")
    return child.before


def test_an_interactive_session_chats_clears_survives_bad_input_and_stops():
    first_query, first_reply = _first_turn()
    second_query = "What color is the box?"
    second_reply = session().chat(IMAGE, second_query, [(first_query, first_reply)], GENERATION).response
    text_reply = session().chat(None, "Hello there", (), GENERATION).response
    image_prompt = "Please enter the image path or URL"

    child = _spawn()
    _ask(child, image_prompt, str(IMAGE))
    _ask(child, "User: ", first_query)
    assert _reply(child) == first_reply  # the reference's own answer
    _ask(child, "User: ", second_query)
    assert _reply(child) == second_reply  # the first turn is in the history
    _ask(child, "User: ", "word " * MAX_LENGTH)
    child.expect_exact("The prompt exceeds the context length limit, please try again.")
    _ask(child, "User: ", "Is <EOI> a token?")  # typed text must not forge image slots
    child.expect_exact("the query: the text contains '<EOI>', which is reserved for the image; ask again")
    _ask(child, "User: ", "clear")
    _ask(child, image_prompt, "/no/such/image.png")
    child.expect_exact("image file not found")
    _ask(child, image_prompt, "")  # text-only conversation
    _ask(child, "User: ", "Hello there")
    assert _reply(child) == text_reply
    _ask(child, "User: ", "stop")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_stream_chat_prints_the_reply_as_it_is_generated_and_stop_at_the_image_prompt_quits():
    child = _spawn("--stream_chat")
    _ask(child, "Please enter the image path or URL", str(IMAGE))
    query, reply = _first_turn()
    _ask(child, "User: ", query)
    assert _reply(child).strip() == reply
    _ask(child, "User: ", "clear")
    _ask(child, "Please enter the image path or URL", "stop")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def _one_shot(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cogvlm.cli", "chat", *FLAGS, *extra],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_one_shot_mode_prints_the_reference_reply(stream):
    query, reply = _first_turn()
    result = _one_shot("--image", str(IMAGE), "--query", query, *(["--stream_chat"] if stream else []))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == reply


def test_one_shot_mode_reports_an_unreadable_image_in_one_line(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = _one_shot("--image", str(broken), "--query", "hi")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("cogvlm chat: error: image ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_boxes_of_a_grounding_reply_are_drawn_on_a_copy_of_the_image(tmp_path):
    response = "A red box [[100,200,400,600]] and a circle [[500,500,900,950;010,010,020,020]]."
    before = IMAGE.read_bytes()
    path = draw_grounding(IMAGE, response, tmp_path)
    assert path is not None and path.parent == tmp_path
    assert IMAGE.read_bytes() == before  # the original is untouched
    drawn, original = Image.open(path).convert("RGB"), Image.open(IMAGE).convert("RGB")
    width, height = original.size
    x, y = round(0.1 * width), round(0.4 * height)  # on the first box's left edge
    assert drawn.getpixel((x, y)) != original.getpixel((x, y))
    assert draw_grounding(IMAGE, "no boxes here", tmp_path) is None
