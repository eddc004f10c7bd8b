"""Broken or hostile checkpoint files end in a `CheckpointError` naming the file and the field, key or member;
absurd sizes are refused before anything is allocated; NaN/inf weights are reported."""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from cogvlm.checkpoints import validation
from cogvlm.checkpoints.hf_format import load_tensor_file, save_hf_checkpoint
from cogvlm.checkpoints.loading import load_model, read_checkpoint
from cogvlm.checkpoints.sat_format import config_from_sat, config_to_sat, load_sat_weights
from cogvlm.checkpoints.validation import (
    check_model_fits,
    check_parallel_layout,
    estimate_model_bytes,
    verify_zip_crcs,
)
from cogvlm.errors import CheckpointError
from cogvlm.models.builders import build_model
from cogvlm.models.presets import preset
from cogvlm.nn.quantized import QuantConfig, is_quantized

WEIGHTS = "1/mp_rank_00_model_states.pt"


def _edit_config(directory, **fields) -> None:
    path = directory / "model_config.json"
    raw = json.loads(path.read_text())
    raw.update(fields)
    path.write_text(json.dumps(raw))


def _meta_bytes(config, dtype) -> int:
    model = build_model(config, device="meta")
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size()) for t in tensors)


def _partly_cross(config):
    # CogAgent with cross-attention on alternate layers only: layers without it are smaller.
    llm = config.llm
    layers = tuple(i % 2 == 0 for i in range(llm.num_layers))
    cross = dataclasses.replace(llm.cross_attention, layers=layers)
    return dataclasses.replace(config, llm=dataclasses.replace(llm, cross_attention=cross))


@pytest.mark.parametrize(
    "config",
    [
        preset("tiny-cogvlm"),
        preset("tiny-cogagent"),
        _partly_cross(preset("tiny-cogagent")),
        preset("cogvlm-17b-490"),
        preset("cogagent-18b"),
    ],
    ids=["tiny-cogvlm", "tiny-cogagent", "partly-cross", "cogvlm-17b-490", "cogagent-18b"],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_size_estimate_equals_the_built_model(config, dtype):
    assert estimate_model_bytes(config, dtype).total == _meta_bytes(config, dtype)


def test_the_estimate_names_the_largest_part():
    config = preset("cogvlm-17b-490")
    many = dataclasses.replace(config, llm=dataclasses.replace(config.llm, num_layers=1000))
    size = estimate_model_bytes(many, torch.bfloat16)
    assert size.largest().startswith("1000 LLM layers (num_layers=1000")
    assert size.total > 800e9
    with pytest.raises(
        CheckpointError, match=r"x/model_config.json: the model needs about 818\.9 GB in bfloat16"
    ):
        check_model_fits(many, torch.bfloat16, "cpu", source="x/model_config.json", available=10**12 // 2)
    assert check_model_fits(many, torch.bfloat16, "cpu", available=10**12).total == size.total


def test_a_model_larger_than_memory_is_refused_before_allocating(sat_copy):
    # 2 layers of width 131072 in float32: about 2 TB, which no test machine has.
    _edit_config(sat_copy, hidden_size=1 << 17, inner_hidden_size=1 << 17)
    with pytest.raises(
        CheckpointError, match=r"needs about 2\.1 TB in float32, more than the .* free on cpu"
    ):
        load_model(sat_copy)


def _device_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


@pytest.mark.parametrize("quant", [QuantConfig(4, 16), QuantConfig(8)], ids=lambda q: q.describe())
def test_the_quantized_estimate_equals_the_quantized_model_loaded(sat_copy, quant):
    model, info = load_model(sat_copy, dtype=torch.float32, quant=quant)
    assert any(is_quantized(module) for module in model.modules())
    quantized = estimate_model_bytes(info.config, torch.float32, quant).total
    assert quantized == _device_bytes(model)
    assert quantized < estimate_model_bytes(info.config, torch.float32).total


def test_a_load_checks_the_size_the_model_takes_quantized(sat_copy, monkeypatch):
    # Free memory between the int4 and the float32 size: the quantized load fits, the float one does not.
    _, info = load_model(sat_copy, dtype=torch.float32)
    quant = QuantConfig(4, 16)
    free = estimate_model_bytes(info.config, torch.float32, quant).total + 1
    assert free < estimate_model_bytes(info.config, torch.float32).total
    monkeypatch.setattr(validation, "available_memory", lambda device: free)
    assert _device_bytes(load_model(sat_copy, dtype=torch.float32, quant=quant)[0]) < free
    with pytest.raises(CheckpointError, match=r"needs about .* in float32, more than the .* free on cpu"):
        load_model(sat_copy, dtype=torch.float32)


def test_tensor_parallel_share_is_what_must_fit():
    config = preset("tiny-cogvlm")
    whole = estimate_model_bytes(config, torch.float32).total
    check_model_fits(config, torch.float32, "cpu", tp_size=2, available=whole // 2 + 1)
    with pytest.raises(CheckpointError, match=r"per rank \(tp_size=2\)"):
        check_model_fits(config, torch.float32, "cpu", tp_size=2, available=whole // 2 - 1000)


@pytest.mark.parametrize("value", [0, -1, 10**9, "2", None, 1.5])
def test_a_bad_model_parallel_size_is_an_error_naming_it(sat_copy, value):
    _edit_config(sat_copy, model_parallel_size=value)
    with pytest.raises(CheckpointError, match=r"model_config.json: field 'model_parallel_size' is"):
        load_model(sat_copy)


def test_a_model_parallel_size_that_does_not_divide_the_heads_is_an_error():
    raw = dict(config_to_sat(preset("tiny-cogvlm")), model_parallel_size=3)
    with pytest.raises(
        CheckpointError, match=r"model_parallel_size=3 does not divide .*num_attention_heads=4"
    ):
        config_from_sat(raw, source="m/model_config.json")
    config = preset("tiny-cogvlm")
    check_parallel_layout(config, 2, "m", "tp_size")
    with pytest.raises(CheckpointError, match=r"m: tp_size=8 does not divide"):
        check_parallel_layout(config, 8, "m", "tp_size")


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ([1, 2], r"'module' is a list, expected a dict of tensors"),
        ({3: torch.zeros(1)}, r"'module': keys that are not strings: \['3'\]"),
        ({"a": [1.0]}, r"'module': entries that are not tensors: \['a'\]"),
    ],
)
def test_a_malformed_module_is_an_error_naming_the_file(sat_copy, module, message):
    torch.save({"module": module}, sat_copy / WEIGHTS)
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states\.pt: " + message):
        load_model(sat_copy)


def _flip_tensor_byte(path) -> str:
    """Invert one byte inside the largest stored tensor of a `torch.save` file; return its member name."""
    with zipfile.ZipFile(path) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack(
        "<HH", data[member.header_offset + 26 : member.header_offset + 30]
    )
    data[member.header_offset + 30 + name_length + extra_length + member.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return member.filename


def test_corrupted_tensor_bytes_are_an_error_naming_file_and_member(sat_copy):
    path = sat_copy / WEIGHTS
    member = _flip_tensor_byte(path)
    # torch itself reads the damaged file without complaint: the CRC check is what catches it.
    assert isinstance(torch.load(path, weights_only=True)["module"], dict)
    with pytest.raises(CheckpointError, match=rf"{path}: member '{member}' is damaged \(Bad CRC-32"):
        load_model(sat_copy)
    with pytest.raises(CheckpointError, match=r"is damaged"):
        verify_zip_crcs(path)
    assert load_sat_weights(path, verify=False)  # the opt-out for files whose CRCs were just checked


def test_a_corrupted_bin_shard_is_an_error(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.arange(4096, dtype=torch.float32)}, path)
    assert torch.equal(load_tensor_file(path)["w"], torch.arange(4096, dtype=torch.float32))
    member = _flip_tensor_byte(path)
    with pytest.raises(CheckpointError, match=rf"member '{member}' is damaged"):
        load_tensor_file(path)
    torch.save({5: torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"keys that are not strings"):
        load_tensor_file(path)


def test_non_finite_weights_are_reported_once_naming_the_tensors(sat_copy, caplog):
    path = sat_copy / WEIGHTS
    module = {key: value.clone() for key, value in torch.load(path, weights_only=True)["module"].items()}
    module["mixins.lm.lm_head.weight"][0, :3] = float("nan")
    module["transformer.final_layernorm.weight"][1] = float("inf")
    torch.save({"module": module}, path)
    with caplog.at_level(logging.WARNING, logger="cogvlm.checkpoints.validation"):
        load_model(sat_copy)
    records = [r.getMessage() for r in caplog.records if "NaN or inf" in r.getMessage()]
    assert len(records) == 1
    assert "2 tensors hold NaN or inf" in records[0]
    assert "mixins.lm.lm_head.weight (3 of 65536)" in records[0]
    assert "transformer.final_layernorm.weight (1 of 64)" in records[0]


def test_finite_weights_give_no_warning(sat_copy, caplog):
    with caplog.at_level(logging.WARNING, logger="cogvlm.checkpoints.validation"):
        load_model(sat_copy)
    assert not [r for r in caplog.records if "NaN or inf" in r.getMessage()]


def _sharded_hf(sat_copy, tmp_path):
    info, state = read_checkpoint(sat_copy)
    total = sum(t.numel() * t.element_size() for t in state.values())
    directory = tmp_path / "hf"
    save_hf_checkpoint(directory, info.config, state, max_shard_bytes=total // 3)
    return directory, json.loads((directory / "model.safetensors.index.json").read_text())


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        (7, r"\['model.embed_tokens.weight'\] is 7, expected a file name"),
        (None, r"is None, expected a file name"),
        ("../outside.safetensors", r"is '../outside.safetensors'; a shard must be a file in the checkpoint"),
        ("OUTSIDE", r"a shard must be a file in the checkpoint folder"),
        ("sub/model.safetensors", r"a shard must be a file in the checkpoint folder"),
        ("", r"a shard must be a file in the checkpoint folder"),
    ],
)
def test_index_entries_must_name_files_in_the_folder(sat_copy, tmp_path, shard, message):
    directory, index = _sharded_hf(sat_copy, tmp_path)
    # A loadable file outside the folder, which the index must not be able to reach.
    outside = tmp_path / "outside.safetensors"
    save_file({"model.embed_tokens.weight": torch.zeros(1024, 64)}, outside)
    index["weight_map"]["model.embed_tokens.weight"] = str(outside) if shard == "OUTSIDE" else shard
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: weight_map.*" + message):
        load_model(directory)
