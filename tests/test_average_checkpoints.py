"""tools/average_checkpoints.py, the weight average tools/train_embedded_dialogue.sh takes of a run's last
checkpoints: run as a script on a run directory laid out as `cogvlm finetune --save` writes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cogvlm.checkpoints.sat_format import load_sat_weights

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "average_checkpoints.py"


def _save_iteration(run: Path, iteration: int, state: dict[str, torch.Tensor]) -> None:
    (run / str(iteration)).mkdir(parents=True)
    torch.save({"module": state}, run / str(iteration) / "mp_rank_00_model_states.pt")


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def run(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_config.json").write_text(json.dumps({"model_class": "CogVLMModel", "num_layers": 1}))
    (run / "tokenizer.model").write_bytes(b"tokenizer bytes")
    for iteration, value in ((100, 1.0), (200, 2.0), (300, 6.0)):
        _save_iteration(run, iteration, {"a": torch.full((2, 3), value), "b": torch.tensor([value, -value])})
    return run


def test_the_average_of_the_named_iterations_with_the_runs_config_and_tokenizer(run, tmp_path):
    done = _run(run, tmp_path / "average", 200, 300)
    assert done.returncode == 0, done.stderr
    average = tmp_path / "average"
    state = load_sat_weights(average / "1" / "mp_rank_00_model_states.pt")
    assert torch.equal(state["a"], torch.full((2, 3), 4.0))
    assert torch.equal(state["b"], torch.tensor([4.0, -4.0]))
    assert (average / "latest").read_text() == "1"
    written = json.loads((average / "model_config.json").read_text())
    assert written == json.loads((run / "model_config.json").read_text())
    assert (average / "tokenizer.model").read_bytes() == b"tokenizer bytes"


def test_iterations_with_different_keys_are_refused_and_nothing_is_written(run, tmp_path):
    _save_iteration(run, 400, {"a": torch.zeros(2, 3)})
    done = _run(run, tmp_path / "average", 100, 400)
    assert done.returncode != 0
    assert "400" in done.stderr and "keys differ" in done.stderr
    assert not (tmp_path / "average").exists()


def test_iterations_with_different_shapes_are_refused_and_nothing_is_written(run, tmp_path):
    _save_iteration(run, 400, {"a": torch.zeros(3), "b": torch.zeros(2)})
    done = _run(run, tmp_path / "average", 100, 400)
    assert done.returncode != 0
    assert f"a has shape [3], [2, 3] at {run} iteration 100" in done.stderr
    assert not (tmp_path / "average").exists()


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
    done = _run(tmp_path / "nowhere", tmp_path / "average", 100)
    assert done.returncode != 0
    assert f"{tmp_path / 'nowhere' / 'model_config.json'}: not found" in done.stderr
    assert not (tmp_path / "average").exists()


def test_a_weighted_blend_with_another_checkpoint_folder(run, tmp_path):
    start = tmp_path / "start"  # e.g. the fp16 SAT model a fine-tune started from
    _save_iteration(start, 1, {"a": torch.full((2, 3), 10.0), "b": torch.tensor([10.0, -10.0])})
    (start / "model_config.json").write_text(json.dumps({"model_class": "CogVLMModel", "num_layers": 1}))
    done = _run(run, tmp_path / "blend", 300, f"{start}:1", "--weights", 0.35, 0.65)
    assert done.returncode == 0, done.stderr
    state = load_sat_weights(tmp_path / "blend" / "1" / "mp_rank_00_model_states.pt")
    assert torch.allclose(state["a"], torch.full((2, 3), 0.35 * 6.0 + 0.65 * 10.0))
    # RUN_DIR gives the config and tokenizer, whatever the other sources are.
    assert json.loads((tmp_path / "blend" / "model_config.json").read_text())["model_class"] == "CogVLMModel"
    assert (tmp_path / "blend" / "tokenizer.model").read_bytes() == b"tokenizer bytes"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["100", "--weights", "1"], "need one positive weight per source: 2 sources, weights [1.0]"),
        (["--weights", "1", "-1"], "need one positive weight per source"),
        (["x:y"], "'x:y': expected ITERATION or DIR:ITERATION"),
    ],
)
def test_bad_sources_or_weights_are_named_and_nothing_is_written(run, tmp_path, extra, message):
    done = _run(run, tmp_path / "blend", 200, *extra)
    assert done.returncode != 0
    assert message in done.stderr
    assert not (tmp_path / "blend").exists()


def test_a_model_parallel_source_is_refused_before_any_weight_is_read(run, tmp_path):
    split = tmp_path / "split"
    _save_iteration(split, 1, {"a": torch.zeros(1, 3), "b": torch.zeros(1)})
    torch.save({"module": {}}, split / "1" / "mp_rank_01_model_states.pt")
    config = {"model_class": "CogVLMModel", "num_layers": 1, "model_parallel_size": 2}
    (split / "model_config.json").write_text(json.dumps(config))
    done = _run(run, tmp_path / "blend", 300, f"{split}:1")
    assert done.returncode != 0
    assert f"{split}: model_parallel_size 2, expected 1" in done.stderr
    assert not (tmp_path / "blend").exists()
