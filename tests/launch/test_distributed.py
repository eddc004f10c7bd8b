"""Interactive `cogvlm chat --nproc 2` in a pseudo-terminal: rank 0 reads the keyboard and broadcasts each
line, both ranks generate, and only rank 0 prints; `stop` and end of input end every rank cleanly."""

from __future__ import annotations

import functools
import io
import sys
import time

import pexpect
import psutil

from cogvlm import api
from cogvlm.frontends.chat import TOO_LONG_MESSAGE
from cogvlm.inference.generate import GenerationConfig
from cogvlm.inference.sampling import SamplingConfig
from tests.golden import find_case, generations, golden_dir, prompts
from tests.parallel.torchrun_jobs import environment

CHECKPOINT = golden_dir() / "cogvlm" / "sat_checkpoint"
TOKENIZER = golden_dir() / "tokenizer.model"
IMAGE = golden_dir() / "test_image.png"
IMAGE_PROMPT = "Please enter the image path or URL"
# Two ranks start (torch imports, gloo, model load) in ~10 s on an idle 2-core machine; generous for CI.
START_TIMEOUT_S = 90
# After `stop` or end of input every rank leaves at once; torchrun notices within its 0.5 s monitor interval.
EXIT_TIMEOUT_S = 20


def _golden_case() -> tuple[dict, dict]:
    """A chat_old golden question without a history (the session's version) and the reference's answer."""
    model_dir = golden_dir() / "cogvlm"
    name = find_case(
        model_dir,
        "of version chat_old without a history",
        lambda p, g: p["version"] == "chat_old" and not p["history"],
    )
    return prompts(model_dir)[name], generations(model_dir)[name]


def _max_length() -> int:
    prompt, generation = _golden_case()
    return len(prompt["input_ids"]) + generation["max_new_tokens"]


@functools.cache
def _single_process_reply(query: str) -> str:
    """What one process answers in a text-only conversation with the CLI's settings (greedy)."""
    session = api.load(CHECKPOINT, local_tokenizer=str(TOKENIZER), version="chat_old")
    generation = GenerationConfig(
        max_length=_max_length(),
        end_token_ids=(session.tokenizer.eos_id,),
        sampling=SamplingConfig(0.8, 1, 0.4, 1.0, "reference"),
    )
    return session.chat(None, query, (), generation).response


def _spawn_two_ranks() -> tuple[pexpect.spawn, io.StringIO]:
    env = environment()
    env.pop("LOCAL_RANK", None)  # a launcher variable would make the CLI think it is already a rank
    args = ["-m", "cogvlm.cli", "chat", "--nproc", "2", "--from_pretrained", str(CHECKPOINT)]
    args += ["--local_tokenizer", str(TOKENIZER), "--version", "chat_old", "--max_length", str(_max_length())]
    child = pexpect.spawn(sys.executable, args, encoding="utf-8", timeout=START_TIMEOUT_S, env=env)
    transcript = io.StringIO()
    child.logfile_read = transcript
    child.setecho(False)
    child.expect_exact(IMAGE_PROMPT)
    child.timeout = EXIT_TIMEOUT_S
    return child, transcript


def _workers(child: pexpect.spawn) -> list[psutil.Process]:
    return psutil.Process(child.pid).children(recursive=True)


def _ask(child: pexpect.spawn, prompt: str, answer: str) -> None:
    child.expect_exact(prompt)
    child.sendline(answer)


def _reply(child: pexpect.spawn) -> str:
    child.expect_exact("Model: ")
    child.expect(r"\r?\n")
    return child.before


def _assert_every_rank_ended(child: pexpect.spawn, workers: list[psutil.Process]) -> None:
    started = time.monotonic()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    _, alive = psutil.wait_procs(workers, timeout=EXIT_TIMEOUT_S - (time.monotonic() - started))
    assert not alive


def test_an_interactive_two_rank_session_prints_each_reply_once_and_stops():
    prompt, generation = _golden_case()
    golden_reply = generation["response_after_official_postprocess"]
    text_reply = _single_process_reply("Hello there")
    child, transcript = _spawn_two_ranks()
    workers = _workers(child)
    assert len([w for w in workers if "cogvlm.cli" in " ".join(w.cmdline())]) == 2
    child.sendline(str(IMAGE))
    _ask(child, "User: ", prompt["query"])
    assert _reply(child) == golden_reply  # the reference's own answer, through both ranks
    # With the history the second prompt no longer fits --max_length: both ranks refuse it alike.
    _ask(child, "User: ", "What color is the box?")
    child.expect_exact(TOO_LONG_MESSAGE)
    _ask(child, "User: ", "clear")
    _ask(child, IMAGE_PROMPT, "")  # a new, text-only conversation
    _ask(child, "User: ", "Hello there")
    assert _reply(child) == text_reply  # what one process answers
    _ask(child, "User: ", "stop")
    _assert_every_rank_ended(child, workers)
    output = transcript.getvalue()
    # Whole reply lines: a short reply (a character or two) may also occur inside other text.
    assert output.count(f"Model: {golden_reply}\r\n") == 1 and output.count(f"Model: {text_reply}\r\n") == 1
    assert output.count(TOO_LONG_MESSAGE) == 1
    assert output.count(IMAGE_PROMPT) == 2 and output.count("User: ") == 5
    assert "Traceback" not in output


def test_end_of_input_on_rank_zero_ends_every_rank_cleanly():
    child, transcript = _spawn_two_ranks()
    workers = _workers(child)
    child.sendline(str(IMAGE))
    child.expect_exact("User: ")
    child.sendeof()  # Ctrl-D: rank 0's input() raises EOFError; rank 1 waits in the broadcast
    _assert_every_rank_ended(child, workers)
    assert "Traceback" not in transcript.getvalue() and "Error" not in transcript.getvalue()
