"""SAT- and HF-style prompts (`--prompt_style`): texts and token ids against fixtures made without our code.

data/prompt_styles.json was written by tools/make_prompt_style_fixtures.py from SPEC §4.1/§4.2 and issue 17
with sentencepiece alone; see that script for the rules.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cogvlm.api import CogVLM
from cogvlm.embedded import EMBEDDED_NAME
from cogvlm.inference.generate import GenerationConfig
from cogvlm.models.builders import build_model
from cogvlm.models.presets import preset
from cogvlm.text_processors import (
    IMAGE_MARKER,
    LlamaTokenizer,
    PromptFormat,
    build_hf_prompt,
    build_turn_inputs,
    hf_template_for_version,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "data" / "prompt_styles.json"


@functools.cache
def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


@functools.cache
def tokenizer() -> LlamaTokenizer:
    return LlamaTokenizer.from_file(REPO / fixture()["tokenizer"])


def _case(name: str) -> dict:
    return next(c for c in fixture()["cases"] if c["name"] == name)


def _ids(case: dict, style: str) -> list[int]:
    prompt_format = PromptFormat(case["version"], style, case["family"])
    history = [tuple(turn) for turn in case["history"]]
    image_length = fixture()["image_length"]
    inputs = build_turn_inputs(
        tokenizer(), prompt_format, case["query"], history, image_length, case["has_image"]
    )
    return inputs.input_ids[0].tolist()


CASE_NAMES = [c["name"] for c in json.loads(FIXTURE.read_text())["cases"]]


def test_fixture_is_what_the_tool_writes_from_the_shipped_tokenizer():
    spec = importlib.util.spec_from_file_location(
        "make_fixture", REPO / "tools" / "make_prompt_style_fixtures.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.build_fixture() == fixture(), "rerun tools/make_prompt_style_fixtures.py"
    digest = hashlib.sha256((REPO / fixture()["tokenizer"]).read_bytes()).hexdigest()
    assert digest == fixture()["tokenizer_sha256"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_sat_style_text_and_ids_match_the_fixture(name):
    case = _case(name)
    prompt_format = PromptFormat(case["version"], "sat", case["family"])
    history = [tuple(turn) for turn in case["history"]]
    assert prompt_format.text(case["query"], history, case["has_image"]) == case["sat"]["text"]
    assert _ids(case, "sat") == case["sat"]["input_ids"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_hf_style_text_and_ids_match_the_fixture(name):
    case = _case(name)
    history = [tuple(turn) for turn in case["history"]]
    if case["hf"] is None:
        with pytest.raises(ValueError, match=r"HF CogVLM port has no \[INST\] template"):
            PromptFormat(case["version"], "hf", case["family"])
        return
    assert hf_template_for_version(case["family"], case["version"]) == case["hf"]["template_version"]
    text = build_hf_prompt(case["family"], case["hf"]["template_version"], case["query"], history)
    assert text == case["hf"]["text"]
    assert _ids(case, "hf") == case["hf"]["input_ids"]


@pytest.mark.parametrize("turns", ["0turns", "1turn", "2turns"])
def test_where_the_ports_agree_the_ids_are_the_same(turns):
    for name in (
        f"cogvlm-chat_old-{turns}-image",
        f"cogvlm-base-{turns}-text",
        f"cogagent-chat-{turns}-image",
    ):
        case = _case(name)
        assert _ids(case, "hf") == _ids(case, "sat"), name
    assert _ids(_case("cogvlm-vqa-0turns-image"), "hf") == _ids(_case("cogvlm-vqa-0turns-image"), "sat")


@pytest.mark.parametrize("version", ["vqa", "chat_old"])
def test_hf_cogagent_encodes_a_literal_eoi_after_the_image_slots(version):
    case = _case(f"cogagent-{version}-1turn-image")
    sat, hf = _ids(case, "sat"), _ids(case, "hf")
    slots_end = 1 + fixture()["image_length"] + 2
    assert hf[:slots_end] == sat[:slots_end] == [1] + [0] * (slots_end - 1)
    assert tokenizer().decode(hf[slots_end:]) == case["sat"]["text"]  # the SAT text, marker and all
    assert tokenizer().decode(sat[slots_end:]) == case["sat"]["text"].removeprefix(IMAGE_MARKER)
    extra = len(tokenizer().encode(IMAGE_MARKER + "Question:")) - len(tokenizer().encode("Question:"))
    assert len(hf) - len(sat) == extra > 0


def test_hf_cogvlm_vqa_keeps_the_earlier_turns():
    case = _case("cogvlm-vqa-2turns-image")
    decoded = tokenizer().decode(_ids(case, "hf"))
    for query, response in case["history"]:
        assert f"Question: {query} Short answer: {response}\n" in decoded
    assert "What colour" not in tokenizer().decode(_ids(case, "sat"))


@pytest.mark.parametrize("family", ["cogvlm", "cogagent"])
def test_a_session_in_hf_style_asks_with_the_hf_ids(family):
    torch.manual_seed(0)
    tiny = preset(f"tiny-{family}")  # its vocabulary cut to the tokenizer's, so every answer decodes
    config = dataclasses.replace(tiny, llm=dataclasses.replace(tiny.llm, vocab_size=tokenizer().vocab_size))
    assert config.image_length == fixture()["image_length"]
    model = build_model(config).eval()
    session = CogVLM(model, tokenizer(), "vqa", prompt_style="hf")
    case = _case(f"{family}-vqa-1turn-image")
    history = [tuple(turn) for turn in case["history"]]
    request = session.request(None, case["query"], history)  # text only: no slots
    assert request.text.input_ids[0].tolist() == [1, *case["hf"]["segments"][0]["ids"]]
    images = session.process_image(REPO / "cogvlm" / "embedded" / "example.png")
    assert (
        session.request(images, case["query"], history).text.input_ids[0].tolist() == case["hf"]["input_ids"]
    )
    result = session.chat(images, case["query"], history, GenerationConfig(max_new_tokens=3))
    assert result.history[-1] == (case["query"], result.response)
    assert 1 <= len(result.token_ids) <= 3
    assert "Question:" not in result.response and IMAGE_MARKER not in result.response  # cut after the prompt


def test_an_unknown_style_and_an_hf_cogvlm_chat_are_refused():
    with pytest.raises(ValueError, match="unknown prompt style 'huggingface'; expected one of: sat, hf"):
        PromptFormat("chat", "huggingface")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cogvlm.cli",
            "chat",
            "--prompt_style",
            "hf",
            "--version",
            "chat",
            "--query",
            "hi",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert "the HF CogVLM port has no [INST] template (SAT version 'chat')" in result.stderr
    assert "use --version chat_old, or --prompt_style sat" in result.stderr


@pytest.mark.parametrize("command", ["chat", "serve", "web", "evaluate", "eval-synthetic"])
def test_every_command_that_builds_prompts_takes_the_style(command):
    from cogvlm.cli import build_parser

    required = {"evaluate": ["--from_pretrained", "x", "--data", "d"], "eval-synthetic": ["--data", "d"]}
    required = required.get(command, [])
    parser = build_parser()
    assert parser.parse_args([command, *required]).prompt_style == "sat"
    assert parser.parse_args([command, *required, "--prompt_style", "hf"]).prompt_style == "hf"
    with pytest.raises(SystemExit):
        parser.parse_args([command, *required, "--prompt_style", "transformers"])


def test_serve_and_web_sessions_and_evaluate_get_the_style(tmp_path):
    from cogvlm.cli import build_parser
    from cogvlm.cli.common import load_session
    from cogvlm.train.evaluation import EvaluateConfig, run_evaluation

    args = build_parser().parse_args(["serve", "--prompt_style", "hf", "--version", "vqa", "--offline"])
    session = load_session(args, None)
    assert (session.prompt_style, session.version) == ("hf", "vqa")
    history = [("What colour is the circle?", "Red.")]
    decoded = session.tokenizer.decode(session.request(None, "How many?", history).text.input_ids[0].tolist())
    assert "Question: What colour is the circle? Short answer: Red.\nQuestion: How many?" in decoded
    (tmp_path / "data.jsonl").write_text("")
    config = EvaluateConfig(
        from_pretrained=EMBEDDED_NAME,
        data_path=str(tmp_path / "data.jsonl"),
        version="chat",
        prompt_style="hf",
    )
    with pytest.raises(ValueError, match=r"HF CogVLM port has no \[INST\] template"):
        run_evaluation(config)
