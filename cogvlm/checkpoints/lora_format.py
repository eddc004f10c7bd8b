"""LoRA adapters in SAT checkpoints: the `model_config.json` fields and the base weights' key names.

A LoRA checkpoint keeps SAT's layout (see `cogvlm.mixins.lora`); this module reads and writes what the
config says about the adapter and renames a base checkpoint's keys for a wrapped model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from cogvlm.checkpoints.config_fields import MAX_LAYERS, MAX_WIDTH, ConfigFields
from cogvlm.errors import CheckpointError
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


def lora_config_from_sat(
    raw: Mapping, has_cross_attention: bool = False, source: str = "model_config.json"
) -> LoraConfig | None:
    """The LoRA configuration recorded in a `model_config.json` dict, or None.

    Checkpoints written by the reference carry only `use_lora`, `lora_rank` and `layer_range`; their
    adapter is α = 1 on the language and EVA attention (and CogAgent's cross-attention), with the same
    layer list applied to both towers. A malformed field is a `CheckpointError` naming it.
    """
    fields = ConfigFields(raw, source)
    if fields.has("lora_args"):
        return _lora_args(fields.section("lora_args"))
    if not raw.get("use_lora"):
        return None
    layer_range = _layer_list(fields, "layer_range")
    targets = DEFAULT_TARGETS + (("cross_attention",) if has_cross_attention else ())
    return LoraConfig(
        rank=fields.integer("lora_rank", 10, maximum=MAX_WIDTH),
        alpha=1.0,
        targets=targets,
        layer_range=layer_range,
        vision_layer_range=layer_range,
    )


def _layer_list(fields: ConfigFields, name: str) -> tuple[int, ...] | None:
    value = fields.raw.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_LAYERS:
        raise fields.error(name, f"must be a list of at most {MAX_LAYERS} layer numbers")
    items = ConfigFields(dict(enumerate(value)), fields.source, fields._name(name))
    return tuple(items.integer(index, minimum=0, maximum=MAX_LAYERS) for index in range(len(value)))


def _lora_args(args: ConfigFields) -> LoraConfig:
    # Types and ranges are checked here; LoraConfig checks the names of targets and fields.
    checked = dict(args.raw)
    checked["rank"] = args.integer("rank", 10, maximum=MAX_WIDTH)
    for name, low, high in (("alpha", 1e-12, 1e12), ("dropout", 0.0, 0.999999)):
        if args.has(name):
            checked[name] = args.number(name, minimum=low, maximum=high)
    for name in ("layer_range", "vision_layer_range"):
        checked[name] = _layer_list(args, name)
    if args.has("seed"):
        checked["seed"] = args.integer("seed", minimum=0, maximum=2**63 - 1)
    targets = checked.get("targets", list(DEFAULT_TARGETS))
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise args.error("targets", "must be a list of target names")
    try:
        return LoraConfig.from_json(checked)
    except ValueError as error:
        raise CheckpointError(f"{args.source}: lora_args: {error}") from None
