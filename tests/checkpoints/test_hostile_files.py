"""The other files a checkpoint folder holds (LoRA fields, `latest`, JSON files, generation settings, split
sizes, shapes a config is inferred from): each broken or hostile form is a clear error, read with bounds."""

from __future__ import annotations

import json
import os

import pytest

from cogvlm.checkpoints.convert import parse_byte_size
from cogvlm.checkpoints.json_files import read_json
from cogvlm.checkpoints.loading import CheckpointInfo, load_model
from cogvlm.checkpoints.lora_format import lora_config_from_sat, lora_config_to_sat
from cogvlm.checkpoints.model_parallel import split_checkpoint
from cogvlm.checkpoints.sat_format import config_to_sat, infer_cross_vision
from cogvlm.errors import CheckpointError, ConfigError
from cogvlm.mixins.lora import LoraConfig
from cogvlm.models.presets import preset
from tests.golden import golden_dir

LORA = lora_config_to_sat(LoraConfig(rank=4, alpha=8.0, layer_range=(0, 1)))


def test_lora_fields_round_trip():
    assert lora_config_from_sat(LORA) == LoraConfig(rank=4, alpha=8.0, layer_range=(0, 1))
    reference = {"use_lora": True, "lora_rank": 6, "layer_range": [1]}
    assert lora_config_from_sat(reference) == LoraConfig(rank=6, layer_range=(1,), vision_layer_range=(1,))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lora_args": None}, r"field 'lora_args' is None, expected an object"),
        ({"lora_args": [4]}, r"field 'lora_args' is \[4\], expected an object"),
        ({"lora_args": {**LORA["lora_args"], "rank": 10**9}}, r"field 'lora_args.rank' is 1000000000"),
        (
            {"lora_args": {**LORA["lora_args"], "rank": "4"}},
            r"field 'lora_args.rank' is '4', expected an integer",
        ),
        ({"lora_args": {**LORA["lora_args"], "alpha": float("nan")}}, r"'lora_args.alpha' is nan"),
        ({"lora_args": {**LORA["lora_args"], "layer_range": ["a"]}}, r"'lora_args.layer_range.0' is 'a'"),
        ({"lora_args": {**LORA["lora_args"], "layer_range": 3}}, r"'lora_args.layer_range' must be a list"),
        ({"lora_args": {**LORA["lora_args"], "targets": "attention"}}, r"'lora_args.targets' must be a list"),
        ({"lora_args": {**LORA["lora_args"], "targets": ["nope"]}}, r"lora_args: unknown LoRA target"),
        ({"lora_args": {**LORA["lora_args"], "extra": 1}}, r"lora_args: lora_args has unknown field"),
        ({"use_lora": True, "lora_rank": -1}, r"field 'lora_rank' is -1, expected 1 to"),
        ({"use_lora": True, "layer_range": [10**9]}, r"field 'layer_range.0' is 1000000000"),
    ],
)
def test_bad_lora_fields_are_errors_naming_them(fields, message):
    with pytest.raises(CheckpointError, match=r"ckpt/model_config.json: .*" + message):
        lora_config_from_sat(fields, source="ckpt/model_config.json")


@pytest.mark.parametrize("size", [0, -1, 10**9, True])
def test_a_split_size_out_of_range_is_refused(tmp_path, size):
    with pytest.raises(ValueError, match=r"--mp must be 1 to 1024"):
        split_checkpoint(golden_dir() / "cogvlm" / "sat_checkpoint", tmp_path / "out", size)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "infGB"])
def test_a_non_finite_shard_size_is_refused(text):
    with pytest.raises(ConfigError, match="must be a finite number"):
        parse_byte_size(text)


@pytest.mark.parametrize("content", [b"1" * 100, "１".encode(), b"\xff\xfe", b"../1", b"release\nrelease"])
def test_a_bad_latest_file_is_an_error(sat_copy, content):
    (sat_copy / "latest").write_bytes(content)
    with pytest.raises(
        CheckpointError, match=r"latest: contains .*expected an iteration number or 'release'"
    ):
        load_model(sat_copy)


def test_latest_is_read_with_a_bound(sat_copy):
    with open(sat_copy / "latest", "wb") as handle:
        handle.truncate(1 << 30)  # sparse: 1 GB of zero bytes, of which only the first few are read
    with pytest.raises(CheckpointError, match=r"latest: contains '\\x00"):
        load_model(sat_copy)
    (sat_copy / "latest").unlink()
    os.symlink("/dev/zero", sat_copy / "latest")  # not a regular file: never read
    with pytest.raises(CheckpointError, match=r"latest: missing"):
        load_model(sat_copy)


def test_json_files_are_read_with_a_bound(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"pad": "x" * 1000}))
    assert read_json(path)["pad"] == "x" * 1000
    with pytest.raises(CheckpointError, match=r"config.json: larger than 100 bytes"):
        read_json(path, max_bytes=100)
    os.symlink("/dev/zero", tmp_path / "endless.json")
    with pytest.raises(CheckpointError, match=r"endless.json: larger than"):
        read_json(tmp_path / "endless.json")
    with pytest.raises(CheckpointError, match=r"a directory, expected a JSON file"):
        read_json(tmp_path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temperature": "hot"}, r"field 'temperature' is 'hot', expected a number"),
        ({"top_p": 2.0}, r"field 'top_p' is 2.0, expected 0.0 to 1.0"),
        ({"top_k": 1.5}, r"field 'top_k' is 1.5, expected an integer"),
        ({"max_length": 10**12}, r"field 'max_length' is 1000000000000"),
        ({"max_new_tokens": 0}, r"field 'max_new_tokens' is 0"),
        ({"repetition_penalty": float("inf")}, r"field 'repetition_penalty' is inf"),
        ({"do_sample": "yes"}, r"field 'do_sample' is 'yes', expected true or false"),
    ],
)
def test_bad_generation_settings_are_errors_naming_them(tmp_path, fields, message):
    (tmp_path / "generation_config.json").write_text(json.dumps(fields))
    info = CheckpointInfo(tmp_path, "hf", preset("tiny-cogvlm"))
    with pytest.raises(CheckpointError, match=r"generation_config.json: " + message):
        info.generation_config()


def test_good_generation_settings_pass_unchanged(tmp_path):
    fields = {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "max_new_tokens": None, "x": 1}
    (tmp_path / "generation_config.json").write_text(json.dumps(fields))
    info = CheckpointInfo(tmp_path, "hf", preset("tiny-cogvlm"))
    assert info.generation_config() == {
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 5,
        "top_p": 0.9,
        "x": 1,
    }


@pytest.mark.parametrize(
    ("key", "shape", "message"),
    [
        (
            "patch_embed.proj.weight",
            (32, 3, 14),
            r"patch_embed.proj.weight has shape \(32, 3, 14\), expected 4",
        ),
        ("cls_token", (1, 1, 0), r"cls_token has shape \(1, 1, 0\), expected 3 sizes > 0"),
        ("head.weight", None, r"head.weight is missing"),
    ],
)
def test_cross_tower_shapes_are_checked_before_use(key, shape, message):
    prefix = "mixins.encoder.vit.model."
    shapes = {
        prefix + "cls_token": (1, 1, 32),
        prefix + "blocks.0.mlp.w1.weight": (85, 32),
        prefix + "blocks.1.mlp.w1.weight": (85, 32),
        prefix + "patch_embed.proj.weight": (32, 3, 14, 14),
        prefix + "rope.freqs_cos": (64, 16),
        prefix + "head.weight": (16, 32),
    }
    raw = {
        key: value
        for key, value in config_to_sat(preset("tiny-cogagent")).items()
        if key != "cross_vision_args"
    }
    assert infer_cross_vision(raw, shapes).width == 32
    if shape is None:
        del shapes[prefix + key]
    else:
        shapes[prefix + key] = shape
    with pytest.raises(
        CheckpointError, match=r"cannot infer CogAgent's cross vision tower: key .*" + message
    ):
        infer_cross_vision(raw, shapes)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", r"model_config.json: expected a JSON object, found list"),
        ("[" * 100_000 + "]" * 100_000, r"model_config.json: JSON nested too deeply"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, r"model_config.json: JSON nested too deeply"),
        ("null", r"model_config.json: expected a JSON object, found NoneType"),
        ("\ufeff{", r"model_config.json: not valid JSON"),
    ],
)
def test_a_config_that_is_no_object_is_an_error_naming_the_file(sat_copy, text, message):
    (sat_copy / "model_config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message):
        load_model(sat_copy)


@pytest.mark.parametrize(("text", "message"), [("[]", r"found list"), ("[" * 100_000, r"nested too deeply")])
def test_an_hf_config_or_index_that_is_no_object_is_an_error(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"config.json: .*" + message):
        load_model(tmp_path)
