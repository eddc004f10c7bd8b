"""Tensor parallelism with real torchrun processes over gloo: MP=2 and MP=4 equal MP=1."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from tests.golden import golden_dir, load_json
from tests.golden_models import cases, checkpoint_dirs, require_builder, tokenizer_file
from tests.parallel import torchrun_jobs

# The reference's own MP=2 and MP=4 runs differ from MP=1 by <= 4.8e-6 (row-parallel partial sums are added
# in another order); we allow 1e-5 as the issue states.
TP_LOGIT_TOLERANCE = dict(atol=1e-5, rtol=0)


def _golden_split_dirs():
    """Golden folders holding reference-made shards: `<model>_mp<N>`, with the model folder they split."""
    found = []
    for path in sorted(golden_dir().iterdir()):
        match = re.fullmatch(r"(.+)_mp(\d+)", path.name)
        if match and (path / "model_config.json").is_file():
            found.append((path, golden_dir() / match.group(1), int(match.group(2))))
    return found


def _runs():
    runs = [(d / "sat_checkpoint", d, size) for d in checkpoint_dirs() for size in (2, 4)]
    return runs + _golden_split_dirs()


def _run_id(run) -> str:
    checkpoint, model_dir, size = run
    source = "mp1" if checkpoint.name == "sat_checkpoint" else checkpoint.name
    return f"{model_dir.name}-from-{source}-tp{size}"


@pytest.mark.parametrize("run", _runs(), ids=_run_id)
def test_sharded_model_gives_the_logits_and_continuations_of_mp1(run, tmp_path):
    checkpoint, model_dir, size = run
    require_builder(model_dir)
    result = torchrun_jobs.run(
        size, "tp_worker.py", str(checkpoint), str(model_dir), str(tokenizer_file()), str(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "tp.json").read_text()) == {"tp_size": size}
    logits = load_file(tmp_path / "logits.safetensors")
    golden_cases = cases(model_dir)
    assert sorted(logits) == sorted(golden_cases)
    for case, value in logits.items():
        torch.testing.assert_close(value, golden_cases[case]["logits"], **TP_LOGIT_TOLERANCE)
    generations = load_json(model_dir / "generation.json")
    for case, tokens in json.loads((tmp_path / "continuations.json").read_text()).items():
        assert tokens == generations[case]["new_token_ids"], case
