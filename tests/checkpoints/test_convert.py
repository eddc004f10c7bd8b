"""`cogvlm convert`: SAT -> HF -> SAT is the identity, the HF side uses the published names, logits agree."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors import safe_open

from cogvlm import cli
from cogvlm.checkpoints.convert import ConvertConfig, convert_checkpoint, parse_byte_size
from cogvlm.checkpoints.loading import load_model, read_checkpoint_info
from cogvlm.checkpoints.sat_format import config_from_sat, load_sat_weights, save_sat_checkpoint
from cogvlm.errors import CheckpointError, ConfigError
from tests.golden import golden_dir, golden_splits, load_json
from tests.golden_models import case_logits, cases, checkpoint_dirs, require_builder


def _weights(directory):
    return load_sat_weights(directory / "1" / "mp_rank_00_model_states.pt")


def _shard_bytes(source) -> int:
    """A shard size that cuts the checkpoint into several shards, so the index path is exercised."""
    return sum(path.stat().st_size for path in source.glob("1/mp_rank_*_model_states.pt")) // 4


def _assert_bit_identical(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert actual[key].shape == tensor.shape, key
        assert torch.equal(actual[key].view(torch.uint8), tensor.view(torch.uint8)), key


def _round_trip(source, tmp_path, **settings):
    hf = convert_checkpoint(
        ConvertConfig(source, tmp_path / "hf", max_shard_bytes=_shard_bytes(source), **settings)
    )
    sat = convert_checkpoint(ConvertConfig(tmp_path / "hf", tmp_path / "sat"))
    return hf, sat


def _hf_tensors(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
    return tensors


@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda d: d.name)
def test_sat_to_hf_to_sat_is_bit_identical_in_weights_and_config(model_dir, tmp_path):
    source = model_dir / "sat_checkpoint"
    hf, sat = _round_trip(source, tmp_path)
    assert (hf.source_format, hf.target_format, sat.target_format) == ("sat", "hf", "sat")
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 1
    _assert_bit_identical(_weights(tmp_path / "sat"), _weights(source))
    assert load_json(tmp_path / "sat" / "model_config.json") == load_json(source / "model_config.json")
    assert (tmp_path / "sat" / "latest").read_text() == "1"


@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda d: d.name)
def test_hf_output_has_the_published_key_names_and_config_fields(model_dir, tmp_path):
    convert_checkpoint(ConvertConfig(model_dir / "sat_checkpoint", tmp_path / "hf"))
    keys = set(_hf_tensors(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    sat_raw = load_json(model_dir / "sat_checkpoint" / "model_config.json")
    last = sat_raw["num_layers"] - 1
    assert "model.layers.0.self_attn.language_expert_query_key_value.weight" in keys
    assert f"model.layers.{last}.mlp.vision_mlp.gate_proj.weight" in keys
    assert "model.vision.linear_proj.dense_4h_to_h.weight" in keys
    assert {f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(sat_raw["num_layers"])} <= keys
    assert not any(key.startswith(("transformer.", "mixins.")) for key in keys)
    assert config["num_hidden_layers"] == sat_raw["num_layers"]
    assert config["vision_config"]["image_size"] == sat_raw["eva_args"]["image_size"][0]
    assert config["torch_dtype"] == "float32"
    assert config["sat_model_config"] == sat_raw
    if sat_raw["model_class"] == "CogAgentModel":
        assert config["architectures"] == ["CogAgentForCausalLM"]
        assert config["cross_image_size"] == sat_raw["cross_image_pix"]
        assert config["cross_hidden_size"] == sat_raw["cross_attn_hidden_size"]
        heads, head_dim = sat_raw["num_attention_heads"], sat_raw["cross_hidden_size_per_attention_head"]
        assert config["cross_compute_hidden_size"] == heads * head_dim
        assert f"model.layers.{last}.cross_attn.key_value.weight" in keys
        assert "model.cross_vision.vit.model.blocks.0.attn.q_proj.weight" in keys
        assert "model.vision.pos_embed" in keys
    else:
        assert config["architectures"] == ["CogVLMForCausalLM"]


@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda d: d.name)
def test_converted_checkpoints_give_the_same_logits(model_dir, tmp_path):
    require_builder(model_dir)
    _round_trip(model_dir / "sat_checkpoint", tmp_path)
    case = sorted(cases(model_dir))[0]
    original = case_logits(load_model(model_dir / "sat_checkpoint")[0], model_dir, case)
    for converted in ("hf", "sat"):
        logits = case_logits(load_model(tmp_path / converted)[0], model_dir, case)
        assert torch.equal(logits, original), converted
    # The reference's own logits, to 1e-4: float32 on CPU, as the golden README suggests.
    torch.testing.assert_close(original, cases(model_dir)[case]["logits"], atol=1e-4, rtol=0)


def test_bfloat16_checkpoint_stays_bfloat16_both_ways(tmp_path):
    source = golden_dir() / "cogvlm" / "sat_checkpoint"
    config = read_checkpoint_info(source).config
    bf16 = {key: value.to(torch.bfloat16) for key, value in _weights(source).items()}
    save_sat_checkpoint(tmp_path / "bf16", config, [bf16])
    hf, sat = _round_trip(tmp_path / "bf16", tmp_path)
    assert hf.dtypes == sat.dtypes == ("bfloat16",)
    assert {t.dtype for t in _hf_tensors(tmp_path / "hf").values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    _assert_bit_identical(_weights(tmp_path / "sat"), bf16)


@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda d: d.name)
def test_hf_checkpoint_from_elsewhere_gets_a_translated_sat_config(model_dir, tmp_path):
    source = model_dir / "sat_checkpoint"
    convert_checkpoint(ConvertConfig(source, tmp_path / "hf"))
    config_path = tmp_path / "hf" / "config.json"
    raw = json.loads(config_path.read_text())
    del raw["sat_model_config"]  # as in the published HF repositories
    config_path.write_text(json.dumps(raw))
    convert_checkpoint(ConvertConfig(tmp_path / "hf", tmp_path / "sat"))
    weights = _weights(tmp_path / "sat")
    shapes = {key: tuple(value.shape) for key, value in weights.items()}
    written = config_from_sat(load_json(tmp_path / "sat" / "model_config.json"), state_shapes=shapes)
    assert written == read_checkpoint_info(source).config
    _assert_bit_identical(weights, _weights(source))


def test_stale_sat_config_in_hf_config_is_replaced_by_a_translation(tmp_path, caplog):
    convert_checkpoint(ConvertConfig(golden_dir() / "cogvlm" / "sat_checkpoint", tmp_path / "hf"))
    config_path = tmp_path / "hf" / "config.json"
    raw = json.loads(config_path.read_text())
    raw["template_version"] = "vqa"  # edited after conversion: the recorded SAT config no longer matches
    config_path.write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING):
        convert_checkpoint(ConvertConfig(tmp_path / "hf", tmp_path / "sat"))
    assert "sat_model_config no longer matches config.json" in caplog.text
    assert load_json(tmp_path / "sat" / "model_config.json")["text_processor_version"] == "vqa"


@pytest.mark.parametrize("split", golden_splits(), ids=lambda item: item[0].name)
def test_model_parallel_sat_checkpoint_is_merged_into_the_hf_output(split, tmp_path):
    split_dir, model_dir, _ = split
    require_builder(model_dir)
    _round_trip(split_dir, tmp_path)
    _assert_bit_identical(_weights(tmp_path / "sat"), _weights(model_dir / "sat_checkpoint"))
    written = load_json(tmp_path / "sat" / "model_config.json")
    assert written["model_parallel_size"] == written["eva_args"]["model_parallel_size"] == 1


def test_converting_to_the_source_format_or_over_an_existing_output_is_refused(tmp_path):
    source = golden_dir() / "cogvlm" / "sat_checkpoint"
    with pytest.raises(CheckpointError, match="already in SAT format"):
        convert_checkpoint(ConvertConfig(source, tmp_path / "out", target_format="sat"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists; pass --overwrite"):
        convert_checkpoint(ConvertConfig(source, tmp_path / "out"))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    convert_checkpoint(ConvertConfig(source, tmp_path / "out", overwrite=True))
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["config.json", "generation_config.json", "model.safetensors"]  # no tokenizer found


def test_byte_sizes_are_parsed_with_decimal_and_binary_units():
    assert parse_byte_size("5GiB") == 5 << 30
    assert parse_byte_size("500MB") == 500_000_000
    assert parse_byte_size("1.5 kb") == 1500
    assert parse_byte_size("4096") == 4096
    with pytest.raises(ConfigError, match="size '5 parsecs'"):
        parse_byte_size("5 parsecs")


def test_cli_convert_round_trip_and_one_line_errors(tmp_path, capsys):
    source = golden_dir() / "cogvlm" / "sat_checkpoint"
    hf, sat = str(tmp_path / "hf"), str(tmp_path / "sat")
    shard = str(_shard_bytes(source))
    assert (
        cli.main(["convert", "--from_pretrained", str(source), "--output", hf, "--max_shard_size", shard])
        == 0
    )
    assert cli.main(["convert", "--from_pretrained", hf, "--output", sat, "--to", "sat"]) == 0
    out = capsys.readouterr().out.splitlines()
    tensors = len(_weights(source))
    assert out[0].startswith(f"{source} (sat) -> {hf} (hf): {tensors} tensors, dtype float32")
    assert out[1].startswith(f"{hf} (hf) -> {sat} (sat)")
    _assert_bit_identical(_weights(tmp_path / "sat"), _weights(source))
    assert cli.main(["convert", "--from_pretrained", hf, "--output", sat]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"cogvlm convert: error: {sat}: already exists; pass --overwrite to replace it"
    )


def test_same_format_copy_casts_floating_weights_and_carries_the_tokenizer(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(golden_dir() / "cogvlm" / "sat_checkpoint", source)
    shutil.copyfile(golden_dir() / "tokenizer.model", source / "tokenizer.model")
    result = convert_checkpoint(ConvertConfig(source, tmp_path / "half", "sat", dtype=torch.float16))
    assert (result.source_format, result.target_format, result.dtypes) == ("sat", "sat", ("float16",))
    original, half = _weights(source), _weights(tmp_path / "half")
    assert half.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(half[key], tensor.to(torch.float16)), key
    assert (tmp_path / "half" / "tokenizer.model").read_bytes() == (source / "tokenizer.model").read_bytes()
    assert read_checkpoint_info(tmp_path / "half").config == read_checkpoint_info(source).config

    hf = convert_checkpoint(ConvertConfig(source, tmp_path / "hf", max_shard_bytes=_shard_bytes(source)))
    assert hf.dtypes == ("float32",)
    bf16 = convert_checkpoint(ConvertConfig(tmp_path / "hf", tmp_path / "hf16", "hf", dtype=torch.bfloat16))
    assert (bf16.target_format, bf16.dtypes) == ("hf", ("bfloat16",))
    assert json.loads((tmp_path / "hf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (tmp_path / "hf16" / "tokenizer.model").is_file()


def test_casting_to_a_non_floating_dtype_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="torch.int8 is not a floating-point type"):
        ConvertConfig(tmp_path, tmp_path / "out", dtype=torch.int8)


def test_cli_convert_casts_with_dtype(tmp_path, capsys):
    source = golden_dir() / "cogvlm" / "sat_checkpoint"
    out = tmp_path / "half"
    argv = ["convert", "--from_pretrained", str(source), "--output", str(out), "--to", "sat"]
    assert cli.main(argv + ["--dtype", "fp16"]) == 0
    tensors = len(_weights(source))
    assert capsys.readouterr().out.startswith(
        f"{source} (sat) -> {out} (sat): {tensors} tensors, dtype float16"
    )
    assert cli.main(argv + ["--overwrite"]) == 2
    assert "already in SAT format (a same-format copy needs a dtype" in capsys.readouterr().err
