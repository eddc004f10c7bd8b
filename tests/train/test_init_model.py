"""Starting points for training from scratch: sin/cos vision positions, fresh and on an existing model."""

from __future__ import annotations

import shutil

import pytest
import torch

from cogvlm.checkpoints.sat_format import load_sat_weights
from cogvlm.train.init_model import VISION_POSITIONS_KEY, reset_vision_positions, sincos_positions
from tests.golden import golden_dir


def test_sincos_positions_tell_every_patch_apart_and_leave_cls_at_zero():
    table = sincos_positions(grid=8, width=192)
    assert table.shape == (65, 192)
    assert torch.equal(table[0], torch.zeros(192))
    patches = table[1:]
    distances = torch.cdist(patches, patches) + torch.eye(64) * 1e9
    assert distances.min() > 0.5  # no two patches share (nearly) the same code
    assert patches.abs().max() <= 1.0
    # Vertically adjacent patches differ only in the first half (the y code), not in the x half.
    first, below = patches[0], patches[8]
    assert torch.equal(first[96:], below[96:]) and not torch.equal(first[:96], below[:96])
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_positions(grid=8, width=190)


def test_resetting_vision_positions_changes_only_them_and_keeps_the_tokenizer(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(golden_dir() / "cogvlm" / "sat_checkpoint", source)
    shutil.copyfile(golden_dir() / "tokenizer.model", source / "tokenizer.model")
    output = reset_vision_positions(source, tmp_path / "reset")
    before = load_sat_weights(source / "1" / "mp_rank_00_model_states.pt")
    after = load_sat_weights(output / "1" / "mp_rank_00_model_states.pt")
    assert after.keys() == before.keys()
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert changed == [VISION_POSITIONS_KEY]
    rows, width = before[VISION_POSITIONS_KEY].shape
    grid = int((rows - 1) ** 0.5)
    torch.testing.assert_close(after[VISION_POSITIONS_KEY], sincos_positions(grid, width), rtol=0, atol=0)
    assert (output / "tokenizer.model").read_bytes() == (source / "tokenizer.model").read_bytes()


def test_init_model_command_writes_a_loadable_fresh_checkpoint_with_its_tokenizer(tmp_path, capsys):
    from cogvlm import cli
    from cogvlm.api import load

    assert cli.main(["synth-data", str(tmp_path / "data"), "--images", "150", "--seed", "9"]) == 0
    assert cli.main(["init-model", str(tmp_path / "init"), "--data", str(tmp_path / "data")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "init")
    session = load(tmp_path / "init")
    assert session.tokenizer.vocab_size == session.config.llm.vocab_size == 640
    positions = session.model.mixins.eva.vit_model.transformer.position_embeddings.weight
    torch.testing.assert_close(positions, sincos_positions(8, 192), rtol=0, atol=0)
    assert session.tokenizer.decode(session.tokenizer.encode("Where is the red circle?")) == (
        "Where is the red circle?"
    )


def test_resetting_a_checkpoint_without_its_tokenizer_writes_nothing(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(golden_dir() / "cogvlm" / "sat_checkpoint", source)
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        reset_vision_positions(source, tmp_path / "reset")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["source"]
