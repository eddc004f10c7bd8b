"""Load SAT and HF checkpoints into a model, strictly: every key, shape and dtype is checked.

`load_model` streams (`streaming`): the model is built on the meta device and each tensor goes from the
memory-mapped file through this rank's shard, the cast and the quantization to the device, so a quantized
model never exists in full precision on the device. Before anything is allocated the model's size on the
device (quantized layers at their quantized size) is checked against the free memory; once loaded, NaN or
inf weights are reported (`validation`). SAT `.pt` files have their zip CRCs checked when opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from cogvlm.checkpoints import hf_format, sat_format
from cogvlm.checkpoints.json_files import read_json
from cogvlm.checkpoints.quantized_format import read_quantization
from cogvlm.checkpoints.streaming import (
    SCALE_SUFFIX,
    CheckpointTensors,
    KeyLoad,
    materialize_rest,
    plan_load,
    progress_bar,
    stream_weights,
)
from cogvlm.checkpoints.validation import check_generation_config, check_model_fits, warn_non_finite
from cogvlm.errors import CheckpointError
from cogvlm.models.builders import build_model
from cogvlm.models.cogvlm import VisionLanguageModel
from cogvlm.models.config import CogVLMConfig
from cogvlm.nn.quantized import QuantConfig, quantize_shells_
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel
from cogvlm.parallel.sharding import collect_shard_rules, shard_state_dict, unshard_state_dicts

CheckpointFormat = Literal["sat", "hf"]
GENERATION_CONFIG_FILE = "generation_config.json"
_SHOWN_KEYS = 8


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a checkpoint is, its format, its config and (SAT) its model-parallel size."""

    path: Path
    format: CheckpointFormat
    config: CogVLMConfig
    model_parallel_size: int = 1
    quantization: QuantConfig | None = None  # a checkpoint saved quantized (`cogvlm convert --quant`)

    def generation_config(self) -> dict:
        """The checkpoint's recommended generation settings (HF's `generation_config.json`), or {}."""
        path = self.path / GENERATION_CONFIG_FILE
        return check_generation_config(read_json(path), str(path)) if path.is_file() else {}


def detect_format(path: Path) -> CheckpointFormat:
    """`sat` for a directory with model_config.json, `hf` for one with config.json."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if (path / sat_format.MODEL_CONFIG_FILE).is_file():
        return "sat"
    if (path / hf_format.CONFIG_FILE).is_file():
        return "hf"
    raise CheckpointError(
        f"{path}: neither {sat_format.MODEL_CONFIG_FILE} (SAT) nor {hf_format.CONFIG_FILE} (HF) found"
    )


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in tensors.items()}


def _read_sat(path: Path, tp: TensorParallel) -> tuple[CheckpointInfo, dict[str, torch.Tensor], list]:
    checkpoint = sat_format.open_sat_checkpoint(path)
    if checkpoint.model_parallel_size == tp.size:
        shards = [sat_format.load_sat_weights(checkpoint.weight_files[tp.rank])]
    else:
        shards = [sat_format.load_sat_weights(file) for file in checkpoint.weight_files]
    config = sat_format.config_from_sat(
        checkpoint.raw_config,
        source=str(path / sat_format.MODEL_CONFIG_FILE),
        state_shapes=_shapes(shards[0]),
    )
    info = CheckpointInfo(path, "sat", config, checkpoint.model_parallel_size)
    return info, shards[0], shards if len(shards) > 1 else []


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Read only a checkpoint's config (a CogAgent SAT config may need the weight shapes too)."""
    path = Path(path)
    if detect_format(path) == "hf":
        raw, source = read_json(path / hf_format.CONFIG_FILE), str(path / hf_format.CONFIG_FILE)
        config = hf_format.config_from_hf(raw, source)
        return CheckpointInfo(path, "hf", config, quantization=read_quantization(raw, source))
    return _read_sat(path, NO_PARALLEL)[0]


def open_checkpoint(
    path: str | Path, tp: TensorParallel = NO_PARALLEL
) -> tuple[CheckpointInfo, CheckpointTensors]:
    """A checkpoint's info and its memory-mapped tensors (SAT keys), one mapping per saved rank: a load
    with as many ranks reads only its own file, another number merges the files' pieces key by key."""
    path = Path(path)
    if detect_format(path) == "hf":
        info = read_checkpoint_info(path)
        return info, CheckpointTensors([hf_format.load_hf_weights(path)], str(path))
    checkpoint = sat_format.open_sat_checkpoint(path)
    shards = [sat_format.load_sat_weights(file) for file in checkpoint.weight_files]  # mapped, not read
    config = sat_format.config_from_sat(
        checkpoint.raw_config,
        source=str(path / sat_format.MODEL_CONFIG_FILE),
        state_shapes=_shapes(shards[tp.rank if len(shards) == tp.size else 0]),
    )
    info = CheckpointInfo(path, "sat", config, checkpoint.model_parallel_size)
    return info, CheckpointTensors(shards, str(path))


def read_checkpoint(
    path: str | Path, tp: TensorParallel = NO_PARALLEL
) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """A checkpoint's info and this rank's state dict (SAT keys), resharded to `tp` if needed."""
    path = Path(path)
    if detect_format(path) == "hf":
        info = read_checkpoint_info(path)
        return info, _reshard(hf_format.load_hf_weights(path), [], info, tp)
    info, state_dict, all_shards = _read_sat(path, tp)
    return info, _reshard(state_dict, all_shards, info, tp)


def _reshard(
    state_dict, all_shards: list, info: CheckpointInfo, tp: TensorParallel
) -> dict[str, torch.Tensor]:
    if info.model_parallel_size == tp.size:
        return state_dict
    rules = collect_shard_rules(build_model(info.config, device="meta"))
    whole = unshard_state_dicts(all_shards, rules) if all_shards else state_dict
    return shard_state_dict(whole, rules, tp.rank, tp.size) if tp.is_parallel else whole


def _computed_buffer_keys(model: nn.Module) -> set[str]:
    keys = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name in getattr(module, "computed_buffers", ()):
            keys.add(f"{prefix}.{name}" if prefix else name)
    return keys


def _mixins_to_init_from_base(model: nn.Module, missing: set[str]) -> tuple[list[str], set[str]]:
    names, covered = [], set()
    for name, mixin in getattr(model, "mixins", {}).items():
        if not mixin.can_init_from_base:
            continue
        derivable = {
            f"mixins.{name}.{key}"
            for key in mixin.state_dict()
            if key.startswith(mixin.base_derived_prefixes)
        }
        if derivable and derivable <= missing:
            names.append(name)
            covered |= derivable
    return names, covered


def _list(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f", … ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")


def _check_tensor(key: str, tensor: torch.Tensor, expected: torch.Tensor, source: str, tp_size: int) -> None:
    if tuple(tensor.shape) != tuple(expected.shape):
        raise CheckpointError(
            f"checkpoint {source}: key {key} has shape {tuple(tensor.shape)}, "
            f"expected {tuple(expected.shape)}" + (f" for tp_size={tp_size}" if tp_size > 1 else "")
        )
    if expected.is_floating_point() and not tensor.is_floating_point():
        raise CheckpointError(
            f"checkpoint {source}: key {key} has dtype {tensor.dtype}, expected a floating-point tensor"
        )


def load_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, tp_size: int = 1
) -> None:
    """Copy `state_dict` into `model`, failing on any missing, unexpected, mis-shaped or mis-typed key.

    Recomputable buffers (rotary frequencies) may be absent; so may the keys of a mixin that declares
    `init_from_base` (its weights are then derived from the base model's).
    """
    expected = model.state_dict(keep_vars=True)
    unexpected = set(state_dict) - set(expected)
    if unexpected:
        hint = ""
        if any(".matrix_A." in key or ".original." in key for key in unexpected):
            hint = " (LoRA adapter weights: fold them in with `cogvlm merge-lora` first)"
        raise CheckpointError(f"checkpoint {source}: unexpected keys {_list(unexpected)}{hint}")
    missing = set(expected) - set(state_dict) - _computed_buffer_keys(model)
    init_names, covered = _mixins_to_init_from_base(model, missing)
    if missing - covered:
        raise CheckpointError(f"checkpoint {source}: missing keys {_list(missing - covered)}")
    for key, tensor in state_dict.items():
        _check_tensor(key, tensor, expected[key], source, tp_size)
    model.load_state_dict(dict(state_dict), strict=False)
    for name in init_names:
        model.mixins[name].init_from_base(model)


def reset_computed_buffers(model: nn.Module) -> None:
    """Recompute every buffer that is a pure function of the config (after a meta-device build)."""
    for module in model.modules():
        if hasattr(module, "reset_computed_buffers"):
            module.reset_computed_buffers()


def checkpoint_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype of the checkpoint's floating-point weights."""
    return next((t.dtype for t in state_dict.values() if t.is_floating_point()), torch.float32)


def _derived_scales(expected, stored) -> set[str]:
    return {key for key in expected if key.endswith(SCALE_SUFFIX) and key.removesuffix("_scale") in stored}


@dataclass
class LoadPlan:
    """A meta model ready to be filled, the plan that fills it, and the mixins derived afterwards."""

    model: VisionLanguageModel
    keys: list[KeyLoad]
    init_names: list[str]


def plan_model_load(
    config: CogVLMConfig,
    tensors: CheckpointTensors,
    *,
    dtype: torch.dtype | None = None,
    tp: TensorParallel = NO_PARALLEL,
    quant: QuantConfig | None = None,
) -> LoadPlan:
    """Build `config`'s model on the meta device in `dtype` (None: the checkpoint's), its parallel linears
    quantized shells when `quant`, and plan its load from `tensors`: every key, shape and dtype checked."""
    model = build_model(config, tp, device="meta")
    model.to(dtype or checkpoint_dtype(tensors.shards[0]))
    float_shapes = _shapes(model.state_dict())
    if quant is not None:
        quantize_shells_(model, quant.bits, quant.group_size)
    expected, stored = model.state_dict(keep_vars=True), tensors.shards[0]
    computed = _computed_buffer_keys(model)
    absent = set(expected) - set(stored) - _derived_scales(expected, stored) - computed
    init_names, covered = _mixins_to_init_from_base(model, absent)
    keys = plan_load(model, tensors, tp, float_shapes, optional=computed | covered)
    return LoadPlan(model, keys, init_names)


def stream_into_model(
    config: CogVLMConfig,
    tensors: CheckpointTensors,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    tp: TensorParallel = NO_PARALLEL,
    quant: QuantConfig | None = None,
    progress: bool = False,
) -> VisionLanguageModel:
    """`config`'s model filled from `tensors` one tensor at a time (see `streaming`), on `device`.

    Its size on the device (quantized layers at their quantized size) is checked against the free memory
    before anything is allocated; NaN or inf in the loaded weights is warned about afterwards.
    """
    dtype = dtype or checkpoint_dtype(tensors.shards[0])
    check_model_fits(config, dtype, device, tp_size=tp.size, source=tensors.source, quant=quant)
    plan = plan_model_load(config, tensors, dtype=dtype, tp=tp, quant=quant)
    model = plan.model
    bar = progress_bar(f"loading {Path(tensors.source).name}", enabled=progress and tp.rank == 0)
    stream_weights(model, plan.keys, tensors, tp, device, bar)
    materialize_rest(model, device)
    reset_computed_buffers(model)
    with torch.no_grad():
        for name in plan.init_names:
            model.mixins[name].init_from_base(model)
    warn_non_finite(model.state_dict(), tensors.source)  # references to the loaded tensors, no copy
    return model.eval()


def check_quantization(info: CheckpointInfo, quant: QuantConfig | None) -> QuantConfig | None:
    """The quantization to load with: the checkpoint's own, or `quant`; a conflicting request is refused."""
    stored = info.quantization
    if stored is None or quant is None or quant == stored:
        return stored or quant
    raise CheckpointError(
        f"{info.path} is saved quantized ({stored.describe()}); the requested quantization "
        f"({quant.describe()}) differs: drop --quant, or quantize the full-precision checkpoint instead"
    )


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    tp: TensorParallel = NO_PARALLEL,
    quant: QuantConfig | None = None,
    progress: bool = False,
) -> tuple[VisionLanguageModel, CheckpointInfo]:
    """Build the model a checkpoint describes and stream its weights in (dtype None keeps the checkpoint's).

    This rank's shard only is put on `device`; `quant` quantizes the parallel linears on the way (a saved
    quantized checkpoint loads as it is); `progress` shows a bar on stderr (rank 0, a terminal only).
    """
    info, tensors = open_checkpoint(path, tp)
    quant = check_quantization(info, quant)
    model = stream_into_model(
        info.config, tensors, dtype=dtype, device=device, tp=tp, quant=quant, progress=progress
    )
    return model, info


def load_checkpoint(
    path: str | Path,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    quant: QuantConfig | None = None,
    tp: TensorParallel = NO_PARALLEL,
) -> VisionLanguageModel:
    """The model of the checkpoint at `path` on `device`, in `dtype`, quantized by `quant`, this rank's
    shard of `tp` (`load_model` without the info, for benchmarks)."""
    return load_model(path, dtype=dtype, device=device, tp=tp, quant=quant)[0]


def load_model_from_state_dict(
    config: CogVLMConfig,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    tp: TensorParallel = NO_PARALLEL,
) -> VisionLanguageModel:
    """Build a model for `config` and load a flat state dict with SAT keys, already this rank's shard."""
    tensors = CheckpointTensors([state_dict] * tp.size, source)  # one per rank: taken as it is
    return stream_into_model(config, tensors, dtype=dtype, device=device, tp=tp)
