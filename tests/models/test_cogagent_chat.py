"""`cogvlm.api` and `cogvlm chat` with CogAgent checkpoints reproduce every golden continuation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cogvlm import api
from cogvlm.checkpoints.hf_format import save_hf_checkpoint
from cogvlm.checkpoints.loading import load_model
from cogvlm.inference.generate import GenerationConfig
from tests.golden import continued_case, find_case, generations, golden_dir, golden_image_path, prompts
from tests.golden_models import image_inputs

MODEL_DIR = golden_dir() / "cogagent"
CHECKPOINT = MODEL_DIR / "sat_checkpoint"
TOKENIZER = golden_dir() / "tokenizer.model"


def generation_cases() -> list[str]:
    return sorted(generations(MODEL_DIR))


def _case(name: str):
    """The prompt a generation record continues, that prompt's greedy record, and the record itself."""
    records, base = generations(MODEL_DIR), continued_case(MODEL_DIR, name)
    return prompts(MODEL_DIR)[base], records[base], records[name]


def _chat(session: api.CogVLM, name: str) -> tuple[api.ChatResult, dict]:
    prompt, base_generation, generation = _case(name)
    config = GenerationConfig(
        max_length=len(prompt["input_ids"]) + base_generation["max_new_tokens"],
        end_token_ids=tuple(generation.get("end_tokens", [session.tokenizer.eos_id])),
    )
    history = [tuple(turn) for turn in prompt["history"]]
    return session.chat(golden_image_path(), prompt["query"], history, config), generation


@pytest.mark.parametrize("name", generation_cases())
def test_chat_with_a_sat_cogagent_returns_the_reference_continuation(name):
    prompt, _, _ = _case(name)
    session = api.load(CHECKPOINT, local_tokenizer=str(TOKENIZER), version=prompt["version"])
    result, generation = _chat(session, name)
    assert result.token_ids == generation["new_token_ids"]
    if "response_after_official_postprocess" in generation:
        assert result.response == generation["response_after_official_postprocess"]
    assert result.history[-1] == (prompt["query"], result.response)


def test_chat_with_an_hf_cogagent_returns_the_reference_continuation(tmp_path):
    model, info = load_model(CHECKPOINT)
    save_hf_checkpoint(tmp_path / "hf", info.config, model.state_dict())
    name = find_case(MODEL_DIR, "with a history", lambda prompt, _: prompt["history"])
    session = api.load(
        tmp_path / "hf", local_tokenizer=str(TOKENIZER), version=prompts(MODEL_DIR)[name]["version"]
    )
    result, generation = _chat(session, name)
    assert result.token_ids == generation["new_token_ids"]
    assert result.response == generation["response_after_official_postprocess"]


def test_a_cogagent_session_processes_both_resolutions_of_one_image():
    session = api.load(CHECKPOINT, local_tokenizer=str(TOKENIZER))
    images = session.process_image(golden_image_path())
    golden = image_inputs(MODEL_DIR)
    assert torch.equal(images.pixel_values, golden["pixel_values"])
    assert torch.equal(images.cross_pixel_values, golden["cross_pixel_values"])


def test_cli_answers_with_a_cogagent_checkpoint_as_the_reference_does():
    prompt, generation, _ = _case(
        find_case(MODEL_DIR, "without a history", lambda prompt, _: not prompt["history"])
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cogvlm.cli",
            "chat",
            "--from_pretrained",
            str(CHECKPOINT),
            "--local_tokenizer",
            str(TOKENIZER),
            "--version",
            prompt["version"],
            "--image",
            str(golden_image_path()),
            "--query",
            prompt["query"],
            "--max_length",
            str(len(prompt["input_ids"]) + generation["max_new_tokens"]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == generation["response_after_official_postprocess"]
