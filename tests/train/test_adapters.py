"""`cogvlm merge-lora` and `cogvlm export-lora` on a real fine-tuned LoRA checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cogvlm.checkpoints.loading import load_model
from cogvlm.checkpoints.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from cogvlm.mixins.lora import lora_layers
from cogvlm.train.adapters import merge_lora_checkpoint
from cogvlm.train.checkpointing import load_finetuned_model
from tests.golden import golden_dir
from tests.golden_models import case_logits, cases
from tests.train.conftest import LEARNING_TARGETS, base_checkpoint, run_cli

COGVLM_DIR = golden_dir() / "cogvlm"


def _logits(model, case: str) -> torch.Tensor:
    return case_logits(model, COGVLM_DIR, case)


@pytest.fixture(scope="module")
def merged_dir(lora_run, tmp_path_factory):
    """The LoRA run merged by `cogvlm merge-lora`."""
    merged = tmp_path_factory.mktemp("merged") / "merged"
    run_cli(["merge-lora", "--from_pretrained", str(lora_run.save_dir), "--save", str(merged)])
    return merged


@pytest.mark.parametrize("case", sorted(cases(COGVLM_DIR))[:2])
def test_merged_checkpoint_logits_equal_the_lora_models(lora_run, merged_dir, case):
    adapted, _, lora = load_finetuned_model(lora_run.save_dir)
    assert lora is not None and set(lora.targets) == set(LEARNING_TARGETS)
    merged, info = load_model(merged_dir)  # a plain SAT checkpoint: the strict loader accepts it
    assert info.config.text_processor_version == "base"
    assert sorted(merged.state_dict()) == sorted(load_model(base_checkpoint())[0].state_dict())
    lora_logits = _logits(adapted, case)
    assert not torch.allclose(lora_logits, _logits(load_model(base_checkpoint())[0], case), atol=1e-2)
    # W + BA is formed once in float32; the adapter computes x W^T + (x A^T) B^T. |logits| < 10.
    torch.testing.assert_close(_logits(merged, case), lora_logits, atol=1e-5, rtol=0)


def test_export_lora_writes_the_trained_adapter_in_peft_format(lora_run, tmp_path):
    out = tmp_path / "adapter"
    run_cli(["export-lora", "--from_pretrained", str(lora_run.save_dir), "--save", str(out)])
    tensors = load_file(out / ADAPTER_WEIGHTS)
    adapter = json.loads((out / ADAPTER_CONFIG).read_text())
    adapted, _, _ = load_finetuned_model(lora_run.save_dir)
    assert len(adapter["target_modules"]) == len(lora_layers(adapted))
    last = len(adapted.transformer.layers) - 1
    dense = lora_layers(adapted)[f"transformer.layers.{last}.attention.dense"]
    key = f"base_model.model.model.layers.{last}.self_attn.language_expert_dense"
    assert torch.equal(tensors[f"{key}.lora_A.weight"], dense.matrix_A[0])
    assert torch.equal(tensors[f"{key}.lora_B.weight"], dense.matrix_B[0])
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16.0


def test_merge_lora_refuses_a_checkpoint_without_an_adapter(tmp_path):
    with pytest.raises(ValueError, match="records no LoRA adapter"):
        merge_lora_checkpoint(base_checkpoint(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
