"""`cogvlm split` / `cogvlm merge`: the reference's shard layout, exact round trips, and safe failures."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from cogvlm.checkpoints.model_parallel import merge_checkpoint, split_checkpoint
from cogvlm.checkpoints.sat_format import load_sat_weights, open_sat_checkpoint
from cogvlm.cli import main
from cogvlm.errors import CheckpointError
from tests.golden import golden_dir, golden_splits, parallel_sizes
from tests.golden_models import checkpoint_dirs, require_builder


def _states(directory):
    return [load_sat_weights(path) for path in open_sat_checkpoint(directory).weight_files]


def _assert_identical(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert sorted(a) == sorted(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("model_dir", checkpoint_dirs(), ids=lambda d: d.name)
@pytest.mark.parametrize("size", parallel_sizes())
def test_split_then_merge_is_identity(model_dir, size, tmp_path):
    require_builder(model_dir)
    source = model_dir / "sat_checkpoint"
    split_checkpoint(source, tmp_path / "split", size)
    assert open_sat_checkpoint(tmp_path / "split").model_parallel_size == size
    merge_checkpoint(tmp_path / "split", tmp_path / "merged")
    _assert_identical(_states(tmp_path / "merged"), _states(source))
    merged_config = json.loads((tmp_path / "merged" / "model_config.json").read_text())
    assert merged_config == json.loads((source / "model_config.json").read_text())


@pytest.mark.parametrize("split", golden_splits(), ids=lambda item: item[0].name)
def test_split_reproduces_the_reference_shards_and_merge_recovers_mp1(split, tmp_path):
    shards_dir, model_dir, size = split
    whole_dir = model_dir / "sat_checkpoint"
    split_checkpoint(whole_dir, tmp_path / "ours", size)
    _assert_identical(_states(tmp_path / "ours"), _states(shards_dir))
    ours = json.loads((tmp_path / "ours" / "model_config.json").read_text())
    assert ours == json.loads((shards_dir / "model_config.json").read_text())
    merge_checkpoint(shards_dir, tmp_path / "merged")
    _assert_identical(_states(tmp_path / "merged"), _states(whole_dir))


@pytest.fixture
def mp2(tmp_path):
    target = tmp_path / "mp2"
    split_checkpoint(golden_dir() / "cogvlm" / "sat_checkpoint", target, parallel_sizes()[0])
    return target


def _rewrite_shard(directory, rank, change):
    path = open_sat_checkpoint(directory).weight_files[rank]
    state = {key: value.clone() for key, value in load_sat_weights(path).items()}
    change(state)
    path.unlink()  # the loaded file is memory-mapped: replace it rather than overwrite it in place
    torch.save({"module": state}, path)


def test_merging_with_a_missing_shard_fails_and_writes_nothing(mp2, tmp_path):
    (mp2 / "1" / "mp_rank_01_model_states.pt").unlink()
    with pytest.raises(CheckpointError, match=r"shards are missing.*mp_rank_01_model_states\.pt"):
        merge_checkpoint(mp2, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merging_with_a_wrong_shard_count_fails(mp2, tmp_path):
    config = json.loads((mp2 / "model_config.json").read_text())
    config["model_parallel_size"] = 1  # two shard files on disk, but the config claims one
    (mp2 / "model_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"has shape .*expected .*model_parallel_size=1"):
        merge_checkpoint(mp2, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merging_inconsistent_shapes_fails_naming_key_and_file(mp2, tmp_path):
    key = "mixins.mlp.gate_proj.0.weight"
    columns = _states(mp2)[1][key].shape[1]

    def shrink(state):
        state[key] = state[key][:1]

    _rewrite_shard(mp2, 1, shrink)
    with pytest.raises(
        CheckpointError,
        match=rf"mp_rank_01_model_states\.pt: key {re.escape(key)} has shape \(1, {columns}\)",
    ):
        merge_checkpoint(mp2, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merging_differing_replicas_fails(mp2, tmp_path):
    _rewrite_shard(mp2, 1, lambda state: state["transformer.final_layernorm.weight"].add_(1.0))
    with pytest.raises(CheckpointError, match=r"replicated key transformer\.final_layernorm\.weight differs"):
        merge_checkpoint(mp2, tmp_path / "out")


def test_a_failed_merge_leaves_an_existing_target_untouched(mp2, tmp_path):
    target = tmp_path / "out"
    shutil.copytree(golden_dir() / "cogvlm" / "sat_checkpoint", target)
    before = _states(target)
    (mp2 / "1" / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="cannot be read"):
        merge_checkpoint(mp2, target)
    _assert_identical(_states(target), before)


def test_splitting_into_a_size_that_does_not_divide_the_heads_fails(tmp_path):
    source = golden_dir() / "cogvlm" / "sat_checkpoint"
    heads = json.loads((source / "model_config.json").read_text())["num_attention_heads"]
    size = next(n for n in range(2, heads + 2) if heads % n)
    with pytest.raises(CheckpointError, match=rf"--mp={size} does not divide .*num_attention_heads={heads}"):
        split_checkpoint(source, tmp_path / "out", size)
    assert not (tmp_path / "out").exists()


def test_cli_split_and_merge(tmp_path, capsys):
    source = golden_dir() / "cogvlm" / "sat_checkpoint"
    size = str(parallel_sizes()[-1])
    assert main(["split", str(source), str(tmp_path / "split"), "--mp", size]) == 0
    assert main(["merge", str(tmp_path / "split"), str(tmp_path / "mp1")]) == 0
    _assert_identical(_states(tmp_path / "mp1"), _states(source))
    assert main(["merge", str(tmp_path / "absent"), str(tmp_path / "x")]) == 2
    assert "model_config.json: file not found" in capsys.readouterr().err
