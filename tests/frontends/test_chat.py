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
from tests.golden import golden_dir, load_json

CHECKPOINT = golden_dir() / "cogvlm" / "sat_checkpoint"
TOKENIZER = golden_dir() / "tokenizer.model"
IMAGE = golden_dir() / "test_image.png"
MAX_LENGTH = 200
NEW_TOKENS = 12
TIMEOUT_S = 120
# What the CLI flags below amount to: the reference CLI's greedy sampler, capped at NEW_TOKENS.
GENERATION = GenerationConfig(
    max_length=MAX_LENGTH,
    max_new_tokens=NEW_TOKENS,
    sampling=SamplingConfig(0.8, 1, 0.4, 1.0, "reference"),
)
FLAGS = [
    "--from_pretrained", str(CHECKPOINT), "--local_tokenizer", str(TOKENIZER), "--version", "chat_old",
    "--max_length", str(MAX_LENGTH), "--max_new_tokens", str(NEW_TOKENS),
]  # fmt: skip


@functools.cache
def session() -> api.CogVLM:
    return api.load(CHECKPOINT, local_tokenizer=str(TOKENIZER), version="chat_old")


def _golden_reply(case: str) -> str:
    return load_json(golden_dir() / "cogvlm" / "generation.json")[case]["response_after_official_postprocess"]


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
    first_query = load_json(golden_dir() / "cogvlm" / "text_inputs.json")["chat_old_q1"]["query"]
    first_reply = _golden_reply("chat_old_q1")
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
    _ask(child, "User: ", "word " * 300)
    child.expect_exact("The prompt exceeds the context length limit, please try again.")
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
    _ask(child, "User: ", load_json(golden_dir() / "cogvlm" / "text_inputs.json")["chat_old_q1"]["query"])
    assert _reply(child).strip() == _golden_reply("chat_old_q1")
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
    query = load_json(golden_dir() / "cogvlm" / "text_inputs.json")["chat_old_q1"]["query"]
    result = _one_shot("--image", str(IMAGE), "--query", query, *(["--stream_chat"] if stream else []))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == _golden_reply("chat_old_q1")


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
