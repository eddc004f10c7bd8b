"""LoRA adapters in SAT checkpoints: the `model_config.json` fields and the base weights' key names.

A LoRA checkpoint keeps SAT's layout (see `cogvlm.mixins.lora`); this module reads and writes what the
config says about the adapter and renames a base checkpoint's keys for a wrapped model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from cogvlm.mixins.lora import DEFAULT_TARGETS, LoraConfig


def base_keys_to_lora(state_dict: Mapping[str, torch.Tensor], wrapped_paths: Iterable[str]) -> dict:
    """Rename a base checkpoint's `<path>.weight`/`.bias` to `<path>.original.*` for the wrapped paths."""
    wrapped = set(wrapped_paths)
    renamed = {}
    for key, tensor in state_dict.items():
        path, _, name = key.rpartition(".")
        renamed[f"{path}.original.{name}" if path in wrapped else key] = tensor
    return renamed


def lora_config_to_sat(config: LoraConfig) -> dict:
    """Fields for `model_config.json`: SAT's own (`use_lora`, `lora_rank`, `layer_range`) plus ours."""
    return {
        "use_lora": True,
        "lora_rank": config.rank,
        "layer_range": None if config.layer_range is None else list(config.layer_range),
        "lora_args": config.to_json(),
    }


def lora_config_from_sat(raw: Mapping, has_cross_attention: bool = False) -> LoraConfig | None:
    """The LoRA configuration recorded in a `model_config.json` dict, or None.

    Checkpoints written by the reference carry only `use_lora`, `lora_rank` and `layer_range`; their
    adapter is α = 1 on the language and EVA attention (and CogAgent's cross-attention), with the same
    layer list applied to both towers.
    """
    if "lora_args" in raw:
        return LoraConfig.from_json(raw["lora_args"])
    if not raw.get("use_lora"):
        return None
    layer_range = raw.get("layer_range")
    layer_range = None if layer_range is None else tuple(layer_range)
    targets = DEFAULT_TARGETS + (("cross_attention",) if has_cross_attention else ())
    return LoraConfig(
        rank=int(raw.get("lora_rank", 10)),
        alpha=1.0,
        targets=targets,
        layer_range=layer_range,
        vision_layer_range=layer_range,
    )
