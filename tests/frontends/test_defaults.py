"""One set of generation defaults: `chat`, `serve` and `web` start from the loaded model's, and agree.

The embedded model's come from its generation_config.json (greedy, its trained answer budget); a checkpoint
without one gets the reference CLI's (greedy). Also: the embedded model says what it is, and is listed.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from cogvlm import api
from cogvlm.checkpoints.loading import GENERATION_CONFIG_FILE
from cogvlm.embedded import EMBEDDED_NOTICE, embedded_checkpoint
from cogvlm.frontends.chat import ChatConfig, ChatLoop
from cogvlm.frontends.server.config import ServerConfig
from cogvlm.frontends.server.generation import prepare_job
from cogvlm.frontends.server.requests import parse_chat_request
from cogvlm.frontends.web import WebConfig, slider_defaults, web_generation
from cogvlm.inference.generate import GenerationConfig
from cogvlm.inference.settings import REFERENCE_SAMPLING
from tests.golden import golden_dir

GOLDEN_CHECKPOINT = golden_dir() / "cogvlm" / "sat_checkpoint"
GOLDEN_TOKENIZER = golden_dir() / "tokenizer.model"


@functools.cache
def _session(name: str) -> api.CogVLM:
    if name == "embedded":
        return api.load()
    return api.load(GOLDEN_CHECKPOINT, local_tokenizer=str(GOLDEN_TOKENIZER), version="chat_old")


def _front_end_defaults(session: api.CogVLM) -> dict[str, GenerationConfig]:
    """What each front-end generates with when the user sets nothing."""
    chat = ChatLoop(session, ChatConfig(api.ModelSource("x")), sys.stdout, input).generation
    body = {"messages": [{"role": "user", "content": "What color is the triangle?"}]}
    job = prepare_job(session, ServerConfig(), parse_chat_request(body, ServerConfig()))
    web = web_generation(session, WebConfig(), **slider_defaults(session))
    return {"chat": chat, "serve": job.config, "web": web}


@pytest.mark.parametrize("name", ["embedded", "golden"])
def test_chat_serve_and_web_start_from_the_same_defaults(name):
    session = _session(name)
    configs = _front_end_defaults(session)
    assert configs["chat"] == configs["serve"] == configs["web"], configs
    assert configs["chat"].sampling.top_k == 1  # greedy, for both
    assert configs["chat"].max_length == session.config.llm.max_sequence_length


def test_the_embedded_model_answers_greedily_within_its_trained_budget():
    raw = json.loads((embedded_checkpoint() / GENERATION_CONFIG_FILE).read_text())
    assert raw["do_sample"] is False
    config = _session("embedded").generation_config()
    assert config.max_new_tokens == raw["max_new_tokens"]
    assert config.sampling.top_k == 1
    # An asked-for 2048 is capped at the model's 256-token context.
    assert _session("embedded").generation_config(max_length=2048).max_length == 256


def test_a_checkpoint_without_generation_config_gets_the_reference_defaults():
    assert not (GOLDEN_CHECKPOINT / GENERATION_CONFIG_FILE).exists()
    config = _session("golden").generation_config()
    assert config.sampling == REFERENCE_SAMPLING and config.max_new_tokens is None


def test_a_request_that_sets_sampling_gets_it():
    session = _session("embedded")
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}
    job = prepare_job(session, ServerConfig(), parse_chat_request(body, ServerConfig()))
    sampling = job.config.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.5, 1.0, 640)


def test_interactive_chat_with_the_embedded_model_says_it_is_a_toy():
    child = pexpect.spawn(sys.executable, ["-m", "cogvlm.cli", "chat"], encoding="utf-8", timeout=120)
    child.expect_exact(EMBEDDED_NOTICE)
    child.expect_exact("Please enter the image path or URL")
    child.sendline("stop")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "7.5M-parameter toy" in EMBEDDED_NOTICE and "MODEL_CARD.md" in EMBEDDED_NOTICE


def test_list_shows_the_embedded_model(tmp_path: Path):
    env = {**os.environ, "SAT_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "cogvlm.cli", "list", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=True)
    embedded = json.loads(result.stdout)["embedded"]
    assert embedded["name"] == "embedded" and Path(embedded["path"]) == embedded_checkpoint()
    assert "7.5M-parameter toy" in embedded["description"]
    files = [p for p in embedded_checkpoint().rglob("*") if p.is_file()]
    assert embedded["size_bytes"] == sum(p.stat().st_size for p in files)
    text = subprocess.run(command[:-1], capture_output=True, text=True, timeout=120, env=env, check=True)
    lines = text.stdout.splitlines()
    shipped = lines.index("Shipped inside the package:")
    assert lines[shipped + 1].split()[:2] == ["embedded", "sat"] and "7.5M" in lines[shipped + 2]
