"""The public API and the command line, used as a user would."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cogvlm import api
from cogvlm.errors import TokenizerError, UserTextError
from cogvlm.inference.generate import GenerationConfig
from tests.golden import find_case, generations, golden_dir, greedy_cases, prompts
from tests.golden_models import end_tokens

MODEL_DIR = golden_dir() / "cogvlm"
CHECKPOINT = MODEL_DIR / "sat_checkpoint"
TOKENIZER = golden_dir() / "tokenizer.model"
IMAGE = golden_dir() / "test_image.png"


def _golden(case: str):
    return prompts(MODEL_DIR)[case], generations(MODEL_DIR)[case]


@pytest.mark.parametrize("case", greedy_cases(MODEL_DIR))
def test_chat_returns_the_reference_reply_and_extends_history(case):
    prompt, generation = _golden(case)
    session = api.load(CHECKPOINT, local_tokenizer=str(TOKENIZER), version=prompt["version"])
    config = GenerationConfig(
        max_length=len(prompt["input_ids"]) + generation["max_new_tokens"], end_token_ids=end_tokens()
    )
    result = session.chat(IMAGE, prompt["query"], [tuple(turn) for turn in prompt["history"]], config)
    assert result.response == generation["response_after_official_postprocess"]
    assert result.token_ids == generation["new_token_ids"]
    assert result.history[-1] == (prompt["query"], result.response)
    assert len(result.history) == len(prompt["history"]) + 1


def test_text_only_chat_produces_a_reply_without_image_slots():
    session = api.load(CHECKPOINT, local_tokenizer=str(TOKENIZER), version="chat")
    result = session.chat(None, "Hello there", generation=GenerationConfig(max_new_tokens=5))
    assert 1 <= len(result.token_ids) <= 5


@pytest.mark.parametrize(
    ("query", "history", "where"),
    [
        ("What is <EOI> here?", (), "the query"),
        ("And now?", (("Look: <EOI>", "A box."),), "history turn 0's query"),
        ("And now?", (("Hi", "x<EOI>"),), "history turn 0's response"),
    ],
)
def test_text_holding_the_image_marker_is_refused_not_turned_into_image_slots(query, history, where):
    session = api.load(CHECKPOINT, local_tokenizer=str(TOKENIZER), version="chat_old")
    with pytest.raises(UserTextError, match=f"{where}: the text contains '<EOI>'"):
        session.request(IMAGE, query, history)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        api.load(CHECKPOINT, local_tokenizer=str(tmp_path / "absent.model"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cogvlm.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_one_shot_answer_equals_the_reference():
    prompt, generation = _golden(
        find_case(
            MODEL_DIR,
            "of version chat_old without a history",
            lambda p, _: p["version"] == "chat_old" and not p["history"],
        )
    )
    result = _cli(
        "chat",
        "--from_pretrained",
        str(CHECKPOINT),
        "--local_tokenizer",
        str(TOKENIZER),
        "--version",
        prompt["version"],
        "--image",
        str(IMAGE),
        "--query",
        prompt["query"],
        "--max_length",
        str(len(prompt["input_ids"]) + generation["max_new_tokens"]),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == generation["response_after_official_postprocess"]


def test_cli_reports_a_missing_checkpoint_in_one_line(tmp_path):
    result = _cli("chat", "--from_pretrained", str(tmp_path / "nope"), "--query", "hi")
    assert result.returncode == 2
    assert result.stderr.strip() == f"cogvlm chat: error: {tmp_path / 'nope'}: no such checkpoint directory"
