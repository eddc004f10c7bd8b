"""QLoRA runs: a LoRA adapter trained on a frozen base whose parallel linears are quantized (int8 / int4).

What a QLoRA checkpoint holds: the adapter (the only trainable weights) and its optimizer state, never
the base. `model_config.json` records which base (`--from_pretrained` as given, and the directory it
resolved to) and the quantization settings; resuming, evaluating or merging loads that base again and
quantizes it again. Quantization is a pure function of the base weights (and independent of the
tensor-parallel layout), so the rebuilt base is the trained one bit for bit; a SHA-256 of each
tensor-parallel rank's integers and scales, recorded when the run starts, proves it (a changed base is
an error that names it). Saving the quantized base would add 0.26-0.5x the base's size to every
checkpoint (about 9 GB for CogVLM-17B at int4) for bytes the base already determines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from cogvlm.checkpoints.resolve import resolve_checkpoint
from cogvlm.errors import CheckpointError, ConfigError
from cogvlm.nn.quantized import QuantConfig
from cogvlm.parallel.sharding import collect_shard_rules, shard_state_dict

QLORA_FIELD = "qlora"  # the model_config.json field that marks a QLoRA run


@dataclass(frozen=True)
class QLoraBase:
    """The base a QLoRA adapter was trained on: as given, where it was found, how it was quantized, and
    the fingerprint of each tensor-parallel rank's quantized weights."""

    base: str
    base_path: str
    quantization: QuantConfig
    fingerprints: tuple[str, ...]

    def to_json(self) -> dict:
        """The JSON of the `qlora` field in `model_config.json`."""
        return {
            "base": self.base,
            "base_path": self.base_path,
            **self.quantization.to_json(),
            "base_sha256": list(self.fingerprints),
        }

    @classmethod
    def from_model_config(cls, raw: Mapping, source: str) -> QLoraBase | None:
        """The record in a `model_config.json` dict, or None for a run without quantization."""
        data = raw.get(QLORA_FIELD)
        if data is None:
            return None
        try:
            return cls(
                base=str(data["base"]),
                base_path=str(data["base_path"]),
                quantization=QuantConfig.from_json(data),
                fingerprints=tuple(str(value) for value in data["base_sha256"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{source}: field {QLORA_FIELD!r} is malformed ({error!r})") from None


def quantized_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The quantized weights (integer tensors) and their `weight_scale`s of a state dict."""
    return {
        key: value
        for key, value in state_dict.items()
        if not value.is_floating_point() or key.endswith(".weight_scale")
    }


def fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, shapes and bytes of the quantized tensors (scales taken as float32)."""
    digest = hashlib.sha256()
    for key, value in sorted(quantized_tensors(state_dict).items()):
        value = value.detach().float() if value.is_floating_point() else value.detach()
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.contiguous().cpu().view(torch.uint8).numpy())
    return digest.hexdigest()


def gather_rank_fingerprints(model: nn.Module, tp_size: int) -> tuple[str, ...]:
    """The fingerprint of each tensor-parallel rank's shard (every rank calls; global ranks 0..tp-1
    are the first data-parallel replica's tensor-parallel ranks)."""
    own = fingerprint(model.state_dict())
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return (own,)
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, own)
    return tuple(everyone[:tp_size])


def check_same_base(record: QLoraBase, model: nn.Module, tp_rank: int, tp_size: int, source: str) -> bool:
    """Raise if `model`'s freshly quantized base differs from the one `record` was trained on.

    Compares this rank's shard when the layout is the recorded one; one process holding the whole model
    compares every recorded shard. Returns False (nothing compared) for other layouts.
    """
    recorded = record.fingerprints
    if tp_size == len(recorded):
        found = {tp_rank: fingerprint(model.state_dict())}
    elif tp_size == 1:
        whole = quantized_tensors(model.state_dict())
        rules = collect_shard_rules(model)
        found = {
            rank: fingerprint(shard_state_dict(whole, rules, rank, len(recorded)))
            for rank in range(len(recorded))
        }
    else:
        return False
    changed = [rank for rank, value in found.items() if value != recorded[rank]]
    if changed:
        raise CheckpointError(
            f"{source}: the base {record.base_path} quantized ({record.quantization.describe()}) differs "
            f"from the one this adapter was trained on (tensor-parallel rank(s) {changed}: sha256 "
            f"{found[changed[0]][:12]}..., recorded {recorded[changed[0]][:12]}...): the base has changed"
        )
    return True


def resolve_base(record: QLoraBase, override: str | None, source: str) -> Path:
    """Where to load the base from: `override`, else the recorded directory, else the recorded name."""
    if override is not None:
        return resolve_checkpoint(override)
    if Path(record.base_path).is_dir():
        return Path(record.base_path)
    try:
        return resolve_checkpoint(record.base)
    except (FileNotFoundError, CheckpointError) as error:
        raise FileNotFoundError(
            f"{source}: the QLoRA base {record.base_path} (given as {record.base!r}) is not available "
            f"({error}); point to it with --base"
        ) from None


def check_resumable(saved: QLoraBase | None, current: QLoraBase | None, save_dir: str) -> None:
    """Refuse to resume a run with another base or other quantization settings than it was saved with."""
    if saved is None and current is None:
        return
    if saved is None or current is None:
        was = "without" if saved is None else f"with --quant {saved.quantization.bits}"
        raise ConfigError(
            f"{save_dir}: the run was saved {was}; resume it with the same settings, or use a new --save"
        )
    if saved.quantization != current.quantization:
        raise ConfigError(
            f"{save_dir}: the run was saved with quantization {saved.quantization.describe()}, "
            f"now {current.quantization.describe()}"
        )
    if len(saved.fingerprints) != len(current.fingerprints):
        raise ConfigError(
            f"{save_dir}: the run was saved with tp_size {len(saved.fingerprints)}, "
            f"now {len(current.fingerprints)}; resume with the same layout"
        )
    if saved.fingerprints != current.fingerprints:
        raise ConfigError(
            f"{save_dir}: the base {current.base_path} quantizes to other weights than the run's base "
            f"{saved.base_path} (sha256 {current.fingerprints[0][:12]}... vs {saved.fingerprints[0][:12]}...)"
        )


def trainable_names(model: nn.Module) -> set[str]:
    """Names of the parameters that train."""
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def load_parameters(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], expected: set[str], source: str
) -> None:
    """Copy a checkpoint that holds exactly the parameters named `expected` (an adapter) into `model`."""
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {source}: expected exactly the {len(expected)} adapter weights; "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    parameters = dict(model.named_parameters())
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(parameters[key].shape):
            raise CheckpointError(
                f"checkpoint {source}: key {key} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(parameters[key].shape)}"
            )
    model.load_state_dict(dict(state_dict), strict=False)


def save_only_trainable_weights(engine) -> None:
    """Make the DeepSpeed engine's checkpoints hold only the trainable parameters' weights.

    DeepSpeed's `exclude_frozen_parameters` drops frozen parameters but keeps every buffer, and the
    quantized base lives in buffers; so the module state the engine saves is filtered here.
    """
    kept = trainable_names(engine.module)
    whole_state = engine.module_state_dict

    def trainable_state(*args, **kwargs) -> dict:
        return {key: value for key, value in whole_state(*args, **kwargs).items() if key in kept}

    engine.module_state_dict = trainable_state
