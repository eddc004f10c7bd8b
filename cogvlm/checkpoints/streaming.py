"""Streaming, memory-bounded loading: one tensor at a time from the mapped checkpoint to the device.

The model is built on the meta device, its parallel linears replaced by empty quantized shells when
quantizing (`quantize_shells_`). `plan_load` pairs every key with its checkpoint tensor(s) and shard rule and
checks every shape and dtype before a byte is read. `stream_weights` then goes key by key: it reads the
memory-mapped tensor (SAT `.pt` through `torch.load(mmap=True)`, safetensors through `safe_open`), takes
this rank's piece (merging the checkpoint's own shards first when their number differs from the ranks'),
casts it, quantizes it when asked, and only then copies it to the device in place of the meta tensor.

Peak device memory is the final model plus one tensor in flight; peak heap is about one tensor (a whole
one when an MP=N checkpoint is re-split), the rest being reclaimable page cache of the mapped files.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cogvlm.errors import CheckpointError
from cogvlm.nn.quantized import QuantizedProjection, is_quantized, quantize_for
from cogvlm.parallel.groups import TensorParallel
from cogvlm.parallel.sharding import REPLICATED, ShardRule, collect_shard_rules, shard_tensor, unshard_tensors

_SHOWN_KEYS = 8
SCALE_SUFFIX = "_scale"


@dataclass(frozen=True)
class CheckpointTensors:
    """A checkpoint's tensors under SAT keys, one mapping per model-parallel rank it was saved with.

    The tensors are lazy (memory-mapped, or meta for planning); `source` names the checkpoint in errors.
    """

    shards: Sequence[Mapping[str, torch.Tensor]]
    source: str

    def piece(self, key: str, rule: ShardRule, tp: TensorParallel) -> torch.Tensor:
        """This rank's piece of `key` (a view of the mapped file when no split is needed)."""
        if len(self.shards) == tp.size:
            return self.shards[tp.rank][key]
        pieces = [shard[key] for shard in self.shards]
        whole = unshard_tensors(pieces, rule) if len(pieces) > 1 else pieces[0]
        return shard_tensor(whole, rule, tp.rank, tp.size)

    def piece_shape(self, key: str, rule: ShardRule, tp: TensorParallel) -> tuple[int, ...]:
        """The shape `piece` will have, from the stored shapes alone (an impossible split is an error)."""
        if len(self.shards) == tp.size:
            return tuple(self.shards[tp.rank][key].shape)
        shape = list(self.shards[0][key].shape)
        if rule.is_replicated:
            return tuple(shape)
        shape[rule.dim] = sum(shard[key].shape[rule.dim] for shard in self.shards)
        if not rule.splits_evenly(shape[rule.dim], tp.size):
            raise CheckpointError(
                f"checkpoint {self.source}: key {key} of shape {tuple(shape)} cannot be split into "
                f"{tp.size} ranks along dimension {rule.dim}"
            )
        shape[rule.dim] //= tp.size
        return tuple(shape)


@dataclass(frozen=True)
class KeyLoad:
    """How one checkpoint key reaches the model: its rule, this rank's piece shape, and whether the piece is
    a float weight to quantize into `<layer>.weight` and `<layer>.weight_scale`."""

    key: str
    rule: ShardRule
    shape: tuple[int, ...]
    dtype: torch.dtype
    quantize: bool = False


def _list(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f", … ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    module_name, _, name = key.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), name


def _quantized_on_load(model: nn.Module, key: str, stored_keys) -> bool:
    """True for `<layer>.weight` of a quantized layer whose checkpoint holds floats (no stored scales)."""
    module, name = _owner(model, key)
    return is_quantized(module) and name == "weight" and key + SCALE_SUFFIX not in stored_keys


def _check_piece(key: str, shape, expected: torch.Tensor, stored: torch.Tensor, source: str, tp) -> None:
    if shape != tuple(expected.shape):
        raise CheckpointError(
            f"checkpoint {source}: key {key} has shape {shape}, expected {tuple(expected.shape)}"
            + (f" for tp_size={tp.size}" if tp.is_parallel else "")
        )
    if expected.is_floating_point() and not stored.is_floating_point():
        raise CheckpointError(
            f"checkpoint {source}: key {key} has dtype {stored.dtype}, expected a floating-point tensor"
        )
    if not expected.is_floating_point() and stored.dtype != expected.dtype:
        raise CheckpointError(
            f"checkpoint {source}: key {key} has dtype {stored.dtype}, expected {expected.dtype}"
        )


def plan_load(
    model: nn.Module,
    tensors: CheckpointTensors,
    tp: TensorParallel,
    float_shapes: Mapping[str, tuple[int, ...]],
    optional: set[str] = frozenset(),
) -> list[KeyLoad]:
    """Every checkpoint key's `KeyLoad`, in the model's order, after checking keys, shapes and dtypes.

    `model` is the meta model to fill; `float_shapes` are this rank's shapes of the unquantized model
    (what a float weight to quantize must have); keys in `optional` may be missing.
    """
    stored = tensors.shards[0]
    expected = model.state_dict(keep_vars=True)
    rules = collect_shard_rules(model)
    derived = {key + SCALE_SUFFIX for key in expected if _quantized_on_load(model, key, stored)}
    unexpected = set(stored) - set(expected)
    if unexpected:
        hint = ""
        if any(".matrix_A." in key or ".original." in key for key in unexpected):
            hint = " (LoRA adapter weights: fold them in with `cogvlm merge-lora` first)"
        raise CheckpointError(f"checkpoint {tensors.source}: unexpected keys {_list(unexpected)}{hint}")
    missing = set(expected) - set(stored) - derived - optional
    if missing:
        raise CheckpointError(f"checkpoint {tensors.source}: missing keys {_list(missing)}")
    plan = []
    for key, target in expected.items():
        if key not in stored:
            continue
        rule = rules.get(key, REPLICATED)
        shape = tensors.piece_shape(key, rule, tp)
        quantize = key + SCALE_SUFFIX in derived
        dtype = _owner(model, key)[0].weight_scale.dtype if quantize else target.dtype
        want = torch.empty(float_shapes[key], dtype=dtype, device="meta") if quantize else target
        _check_piece(key, shape, want, stored[key], tensors.source, tp)
        plan.append(KeyLoad(key, rule, shape, dtype, quantize))
    return plan


def _to_device(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A new tensor on `device` holding `tensor` in `dtype`: the one place a load allocates there."""
    placed = torch.empty(tensor.shape, dtype=dtype, device=device)
    placed.copy_(tensor)
    return placed


Aliases = dict[tuple[int, str], list[tuple[nn.Module, str]]]


def _aliases(model: nn.Module) -> Aliases:
    """(id(module), name) -> every (module, name) holding that same tensor, where modules differ."""
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            if tensor is not None:
                holders.setdefault(id(tensor), []).append((module, name))
    shared = [places for places in holders.values() if len({id(m) for m, _ in places}) > 1]
    return {(id(module), name): places for places in shared for module, name in places}


def _assign(module: nn.Module, name: str, value: torch.Tensor, aliases: Aliases | None = None) -> None:
    """Put `value` in place of `module.<name>` and of its `aliases` (tied weights stay tied)."""
    slots = module._parameters if name in module._parameters else module._buffers
    if isinstance(slots[name], nn.Parameter):
        value = nn.Parameter(value, requires_grad=slots[name].requires_grad)
    for owner, attr in (aliases or {}).get((id(module), name), [(module, name)]):
        (owner._parameters if attr in owner._parameters else owner._buffers)[attr] = value


def _reduce_device(device: torch.device, tp: TensorParallel) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo takes the CPU ones.
    return device if tp.is_parallel and device.type == "cuda" else torch.device("cpu")


def stream_weights(
    model: nn.Module,
    plan: Sequence[KeyLoad],
    tensors: CheckpointTensors,
    tp: TensorParallel,
    device: torch.device | str,
    progress: Callable[[Sequence[KeyLoad]], object] | None = None,
) -> None:
    """Fill `model`'s meta tensors from `tensors` as `plan` says, one key at a time (see the module doc)."""
    device = torch.device(device)
    steps = progress(plan) if progress is not None else plan
    _stream(model, steps, tensors, tp, device)
    for module in model.modules():
        if isinstance(module, QuantizedProjection):
            module.select_kernel()


def _stream(model: nn.Module, steps, tensors: CheckpointTensors, tp: TensorParallel, device) -> None:
    aliases = _aliases(model)
    with torch.no_grad():
        for step in steps:
            module, name = _owner(model, step.key)
            piece = tensors.piece(step.key, step.rule, tp)
            if step.quantize:
                weight = piece.to(step.dtype)
                integers, scale = quantize_for(module, weight, _reduce_device(device, tp))
                del weight
                _assign(module, "weight", _to_device(integers, integers.dtype, device), aliases)
                _assign(module, "weight_scale", _to_device(scale, scale.dtype, device), aliases)
            else:
                _assign(module, name, _to_device(piece, step.dtype, device), aliases)
            del piece


def materialize_rest(model: nn.Module, device: torch.device | str) -> list[str]:
    """Give every tensor still on the meta device empty storage on `device` (for computed buffers and
    weights derived from others); return their names."""
    device, names, aliases = torch.device(device), [], _aliases(model)
    for prefix, module in model.named_modules():
        for name, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            if tensor is not None and tensor.is_meta and device.type != "meta":
                _assign(module, name, torch.empty_like(tensor, device=device), aliases)
                names.append(f"{prefix}.{name}" if prefix else name)
    return names


def progress_bar(description: str, enabled: bool = True) -> Callable[[Sequence[KeyLoad]], object]:
    """A tqdm bar over a plan's keys on stderr, in bytes; off when stderr is not a terminal."""

    def wrap(plan: Sequence[KeyLoad]):
        from tqdm import tqdm

        total = sum(_nbytes(step) for step in plan)
        bar = tqdm(
            total=total,
            desc=description,
            unit="B",
            unit_scale=True,
            file=sys.stderr,
            disable=not (enabled and sys.stderr.isatty()),
        )
        with bar:
            for step in plan:
                yield step
                bar.update(_nbytes(step))

    return wrap


def _nbytes(step: KeyLoad) -> int:
    count = 1
    for size in step.shape:
        count *= size
    return count * step.dtype.itemsize
