"""A LoRA adapter in Hugging Face PEFT's format: `adapter_model.safetensors` + `adapter_config.json`.

PEFT puts one (lora_A [r, in], lora_B [out, r]) pair on each `nn.Linear` of the HF model and adds
`lora_B @ lora_A * lora_alpha / r`. SAT keeps one pair per part of a fused projection (3 for QKV, 2 for
the cross key_value). Those parts are exported exactly as one pair of rank parts x r: lora_A is the
parts' A matrices stacked, lora_B the block-diagonal of their B matrices, so `lora_B @ lora_A` is
`concat_i(B_i A_i)`. The module then gets rank parts x r and alpha parts x alpha through PEFT's
`rank_pattern` / `alpha_pattern`, which keeps the scaling alpha / r unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from cogvlm.checkpoints.hf_format import sat_key_to_hf
from cogvlm.mixins.lora import LoraConfig, LoraLinear, lora_layers
from cogvlm.utils.atomic import atomic_directory

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


def hf_module_name(sat_path: str) -> str:
    """The HF module name of a SAT module path (through the SAT <-> HF key table)."""
    return sat_key_to_hf(f"{sat_path}.weight").removesuffix(".weight")


def pattern_key(hf_module: str) -> str:
    """The `rank_pattern` key of one module: its name without the root `model.` component.

    PEFT matches pattern keys against module names as `.*\\.<key>$` (older releases) or
    `(.*\\.)?<key>$` (newer); a name that keeps a parent component matches under both.
    """
    return hf_module.removeprefix("model.")


def peft_pair(layer: LoraLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A [parts * r, in], lora_B [out, parts * r]) equivalent to the layer's per-part pairs."""
    if layer.tp.is_parallel:
        raise ValueError("export a tensor-parallel adapter after merging its shards (load with tp_size 1)")
    lora_a = layer.matrix_A.stacked().detach()
    lora_b = torch.block_diag(*(layer.matrix_B[i].detach() for i in range(layer.parts)))
    return lora_a.contiguous(), lora_b.contiguous()


def peft_adapter(model: torch.nn.Module, config: LoraConfig, base_model_name_or_path: str = "") -> tuple:
    """The adapter's tensors (PEFT key names) and its `adapter_config.json` dict."""
    tensors: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    modules = []
    for path, layer in lora_layers(model).items():
        name = hf_module_name(path)
        lora_a, lora_b = peft_pair(layer)
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = lora_a
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = lora_b
        modules.append(name)
        if layer.parts > 1:
            rank_pattern[pattern_key(name)] = config.rank * layer.parts
            alpha_pattern[pattern_key(name)] = config.alpha * layer.parts
    if not modules:
        raise ValueError("the model has no LoRA layers to export")
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(modules),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    return tensors, adapter_config


def save_peft_adapter(
    directory: str | Path, model: torch.nn.Module, config: LoraConfig, base_model_name_or_path: str = ""
) -> Path:
    """Write the adapter as a PEFT directory, atomically."""
    directory = Path(directory)
    tensors, adapter_config = peft_adapter(model, config, base_model_name_or_path)
    with atomic_directory(directory) as staging:
        save_file(tensors, staging / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2))
    return directory
