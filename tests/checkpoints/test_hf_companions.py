"""`cogvlm convert --to hf` writes a complete folder: a usable `template_version`, `generation_config.json`
and the tokenizer files the HF port reads."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from cogvlm import cli
from cogvlm.checkpoints.convert import ConvertConfig, convert_checkpoint
from cogvlm.checkpoints.hf_format import config_from_hf, config_to_hf
from cogvlm.checkpoints.loading import read_checkpoint_info
from cogvlm.inference.settings import REFERENCE_SAMPLING, GenerationDefaults
from cogvlm.models.presets import preset
from cogvlm.nn.quantized import QuantConfig
from cogvlm.text_processors.tokenizer import LlamaTokenizer
from tests.golden import golden_dir


@pytest.mark.parametrize(
    ("name", "version", "template"),
    [
        ("tiny-cogvlm", "chat_old", "chat"),
        ("tiny-cogvlm", "base", "base"),
        ("tiny-cogvlm", "vqa", "vqa"),
        ("tiny-cogagent", "chat", "chat"),
        ("tiny-cogagent", "chat_old", "chat_old"),
        ("tiny-cogagent", "base", "base"),
    ],
)
def test_the_hf_template_version_is_the_ports_name_for_our_prompt(name, version, template):
    config = dataclasses.replace(preset(name), text_processor_version=version)
    raw = config_to_hf(config)
    assert raw["template_version"] == template
    assert config_from_hf(raw).text_processor_version == version


def test_a_config_without_a_prompt_version_writes_no_null_template():
    config = dataclasses.replace(preset("tiny-cogvlm"), text_processor_version=None)
    raw = config_to_hf(config)
    # Omitted rather than null: the HF port then uses its own default, "chat".
    assert "template_version" not in raw
    assert config_from_hf(raw).text_processor_version is None


def _convert(tmp_path, *, tokenizer_beside=False, local_tokenizer=None, **options):
    source = tmp_path / "sat"
    shutil.copytree(golden_dir() / "cogvlm" / "sat_checkpoint", source)
    if tokenizer_beside:
        shutil.copyfile(golden_dir() / "tokenizer.model", source / "tokenizer.model")
    config = ConvertConfig(source, tmp_path / "hf", local_tokenizer=local_tokenizer, **options)
    convert_checkpoint(config)
    return tmp_path / "hf"


# Plain conversion, and the streamed writer's outputs (quantized, cast) alike.
@pytest.mark.parametrize(
    "options",
    [{}, {"quant": QuantConfig(4, 16)}, {"quant": QuantConfig(8)}, {"dtype": torch.bfloat16}],
    ids=["plain", "int4", "int8", "bfloat16"],
)
def test_the_converted_folder_has_generation_config_and_tokenizer_files(tmp_path, options):
    tokenizer_path = golden_dir() / "tokenizer.model"
    hf = _convert(tmp_path, local_tokenizer=str(tokenizer_path), **options)
    names = sorted(path.name for path in hf.iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    config = json.loads((hf / "config.json").read_text())
    assert config.get("template_version", "chat") is not None
    assert (hf / "tokenizer.model").read_bytes() == tokenizer_path.read_bytes()
    # The tokenizer's own tokenizer_config.json is copied as it is.
    assert (hf / "tokenizer_config.json").read_bytes() == (
        golden_dir() / "tokenizer_config.json"
    ).read_bytes()
    tokenizer = LlamaTokenizer.from_file(tokenizer_path)
    special = json.loads((hf / "special_tokens_map.json").read_text())
    assert special == {
        "bos_token": tokenizer.piece(tokenizer.bos_id),
        "eos_token": tokenizer.piece(tokenizer.eos_id),
        "unk_token": tokenizer.piece(tokenizer.unk_id),
        "pad_token": tokenizer.piece(tokenizer.pad_id),
    }
    assert special["bos_token"] == "<s>" and special["eos_token"] == "</s>"


def test_the_generation_config_is_the_references_greedy_decoding(tmp_path):
    hf = _convert(tmp_path, tokenizer_beside=True)
    info = read_checkpoint_info(hf)
    raw = info.generation_config()
    assert raw["do_sample"] is False
    assert raw["max_length"] == info.config.llm.max_sequence_length
    assert (raw["bos_token_id"], raw["eos_token_id"], raw["pad_token_id"]) == (1, 2, 0)
    context = info.config.llm.max_sequence_length
    defaults = GenerationDefaults.from_hf_generation_config(raw, context, (info.config.eos_token_id,))
    assert defaults == GenerationDefaults(context, (info.config.eos_token_id,), REFERENCE_SAMPLING)


def test_tokenizer_config_is_written_when_the_tokenizer_has_none(tmp_path):
    hf = _convert(tmp_path, tokenizer_beside=True)  # a bare tokenizer.model beside the source
    written = json.loads((hf / "tokenizer_config.json").read_text())
    assert written["tokenizer_class"] == "LlamaTokenizer"
    assert (written["bos_token"], written["eos_token"], written["unk_token"]) == ("<s>", "</s>", "<unk>")
    assert written["add_bos_token"] is True and written["add_eos_token"] is False
    assert written["model_max_length"] == read_checkpoint_info(hf).config.llm.max_sequence_length
    assert (hf / "tokenizer.model").read_bytes() == (golden_dir() / "tokenizer.model").read_bytes()


def test_an_hf_source_keeps_its_generation_config(tmp_path):
    hf = _convert(tmp_path, tokenizer_beside=True)
    (hf / "generation_config.json").write_text(json.dumps({"do_sample": True, "top_p": 0.9}))
    args = ["convert", "--from_pretrained", str(hf), "--output", str(tmp_path / "hf16"), "--to", "hf"]
    assert cli.main([*args, "--dtype", "bf16"]) == 0
    assert json.loads((tmp_path / "hf16" / "generation_config.json").read_text()) == {
        "do_sample": True,
        "top_p": 0.9,
    }
    assert (tmp_path / "hf16" / "special_tokens_map.json").is_file()


def test_the_cli_passes_local_tokenizer(tmp_path):
    source = golden_dir() / "cogvlm" / "sat_checkpoint"
    tokenizer = golden_dir() / "tokenizer.model"
    args = ["convert", "--from_pretrained", str(source), "--output", str(tmp_path / "hf")]
    assert cli.main([*args, "--local_tokenizer", str(tokenizer)]) == 0
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == tokenizer.read_bytes()


def test_a_cogvlm_inst_chat_prompt_that_the_hf_port_lacks_is_warned_about(caplog):
    """HF CogVLM's "chat" is the Question/Answer format: an [INST] model written there changes prompts."""
    config = dataclasses.replace(preset("tiny-cogvlm"), text_processor_version="chat")
    with caplog.at_level("WARNING", logger="cogvlm.checkpoints.hf_format"):
        raw = config_to_hf(config)
    assert raw["template_version"] == "chat"
    assert "no template for prompt version 'chat'" in caplog.text and "'chat_old'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cogvlm.checkpoints.hf_format"):
        config_to_hf(dataclasses.replace(config, text_processor_version="chat_old"))
    assert caplog.text == ""
