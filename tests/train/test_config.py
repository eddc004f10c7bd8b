"""Run configuration: DeepSpeed JSON translation, flags overriding it, validation, device limits."""

from __future__ import annotations

import json

import pytest
import torch

from cogvlm.cli import build_parser, finetune_config_from_args
from cogvlm.errors import ConfigError
from cogvlm.train.config import (
    DataConfig,
    FinetuneConfig,
    deepspeed_config,
    settings_from_deepspeed_json,
)
from cogvlm.train.loop import check_device_support

# The reference's finetune_demo/test_config_bf16.json (values from SPEC section 8).
REFERENCE_JSON = {
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 0.1,
    "zero_optimization": {
        "stage": 2,
        "contiguous_gradients": False,
        "overlap_comm": True,
        "reduce_scatter": True,
        "reduce_bucket_size": 4e7,
        "allgather_bucket_size": 1e8,
        "load_from_fp32_weights": False,
    },
    "offload_optimizer": {"device": "cpu", "pin_memory": True},
    "zero_allow_untested_optimizer": True,
    "bf16": {"enabled": True},
    "optimizer": {
        "type": "Adam",
        "params": {"lr": 1e-5, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.05},
    },
    "activation_checkpointing": {"partition_activations": False},
    "wall_clock_breakdown": False,
}


def _args(tmp_path, *extra):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(REFERENCE_JSON))
    argv = [
        "finetune",
        "--from_pretrained",
        "ckpt",
        "--train_data",
        "data",
        "--save",
        "out",
        "--train_iters",
        "800",
    ]
    return build_parser().parse_args([*argv, "--deepspeed_config", str(path), *extra])


def test_the_reference_json_becomes_the_run_settings(tmp_path):
    config = finetune_config_from_args(_args(tmp_path))
    assert (config.micro_batch_size, config.gradient_accumulation_steps, config.zero_stage) == (4, 1, 2)
    assert (config.precision, config.gradient_clipping) == ("bf16", 0.1)
    assert config.optimizer.lr == 1e-5 and config.optimizer.betas == (0.9, 0.95)
    assert config.optimizer.weight_decay == 0.05
    assert config.lora is not None and config.lora.rank == 10 and config.lora.alpha == 1.0


def test_explicit_flags_override_the_json_and_untouched_keys_pass_through(tmp_path):
    config = finetune_config_from_args(
        _args(tmp_path, "--lr", "3e-4", "--fp32", "--zero_stage", "1", "--adam_beta2", "0.999", "--full")
    )
    assert config.optimizer.lr == 3e-4 and config.optimizer.betas == (0.9, 0.999)
    assert config.optimizer.weight_decay == 0.05
    assert config.lora is None and config.trainable.full
    final = deepspeed_config(config, data_parallel_size=2)
    assert final["zero_optimization"]["stage"] == 1
    assert final["zero_optimization"]["reduce_bucket_size"] == 4e7
    assert final["bf16"] == {"enabled": False} and final["fp16"] == {"enabled": False}
    assert final["train_batch_size"] == 4 * 1 * 2
    assert final["offload_optimizer"] == REFERENCE_JSON["offload_optimizer"]
    assert "optimizer" not in final and "scheduler" not in final


def test_a_scheduler_section_or_another_optimizer_is_refused():
    with pytest.raises(ConfigError, match="'scheduler' is not supported"):
        settings_from_deepspeed_json({"scheduler": {"type": "WarmupLR"}})
    with pytest.raises(ConfigError, match="optimizer type 'Lamb' is not supported"):
        settings_from_deepspeed_json({"optimizer": {"type": "Lamb"}})


def test_invalid_values_name_the_field():
    data = DataConfig(train_path="x")
    with pytest.raises(ConfigError, match="zero_stage=3, expected 0, 1 or 2"):
        FinetuneConfig(from_pretrained="m", data=data, save_dir="s", train_iters=1, zero_stage=3)
    with pytest.raises(ConfigError, match="nothing would train"):
        FinetuneConfig(from_pretrained="m", data=data, save_dir="s", train_iters=1, lora=None)
    with pytest.raises(ValueError, match="unknown prompt version 'plain'"):
        DataConfig(train_path="x", version="plain")


def test_fp16_on_cpu_is_refused_before_any_work():
    config = FinetuneConfig(from_pretrained="m", data=DataConfig(train_path="x"), save_dir="s", train_iters=1)
    with pytest.raises(ConfigError, match="fp16 training is not supported by DeepSpeed on CPU"):
        check_device_support(FinetuneConfig(**{**config.__dict__, "precision": "fp16"}), torch.device("cpu"))


def test_conflicting_precision_flags_are_an_error(tmp_path):
    with pytest.raises(Exception, match="mutually exclusive"):
        finetune_config_from_args(_args(tmp_path, "--bf16", "--fp32"))
