"""Weight-only int8 / int4 quantization of the column- and row-parallel linears (`quantize_`).

Scheme (SAT's `--quant`, extended with groups): symmetric, `scale = absmax / (2^(bits-1) - 1)` per output
channel, or per group of `group_size` input columns; `q = round(w / scale)`. int4 packs two values per byte,
element 2j in the high nibble and 2j+1 in the low one. The quantized layer keeps its module path, so keys
stay SAT's: `<layer>.weight` holds the integers and `<layer>.weight_scale` the scales, sharded like the
weight (a row-parallel per-channel scale is the same on every rank: its absmax is reduced over the group).
Inference runs in torch's fused kernel where a probe confirms one (`quantized_kernels`; bfloat16 on CPU);
elsewhere, and with autograd on, activations stay in the model dtype and weights are dequantized inside the
matmul. A kernel's own layout of the weight is derived at quantization and on `load_state_dict`, never saved.

The integers and scales are buffers, never parameters: an optimizer, gradient clipping or a data-parallel
all-reduce cannot reach them. A quantized layer is differentiable in its input, so a LoRA adapter wrapped
around it (QLoRA) trains while the base stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cogvlm.models import mixin_names
from cogvlm.nn.quantized_kernels import FusedKernel, select_fused_kernel
from cogvlm.parallel.layers import ColumnParallelLinear, RowParallelLinear
from cogvlm.parallel.sharding import REPLICATED

SUPPORTED_BITS = (4, 8)
QUANTIZE_ROWS = 1024  # rows quantized at once: bounds the float32 temporaries of a large weight
VISION_TOWER_PREFIXES = (mixin_names.prefix(mixin_names.IMAGE), mixin_names.prefix(mixin_names.CROSS_VISION))


@dataclass(frozen=True)
class QuantConfig:
    """Weight-only quantization: `bits` (4 or 8) and `group_size` inputs per scale (None: one per row)."""

    bits: int
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"QuantConfig.bits must be one of {SUPPORTED_BITS}, got {self.bits!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or self.group_size < 1):
            raise ValueError(
                f"QuantConfig.group_size must be a positive int or None, got {self.group_size!r}"
            )

    def describe(self) -> str:
        """E.g. "int4, groups of 32" or "int8, per row"."""
        return f"int{self.bits}, " + (f"groups of {self.group_size}" if self.group_size else "per row")

    def to_json(self) -> dict:
        """A JSON-friendly dict (inverse of `from_json`)."""
        return {"bits": self.bits, "group_size": self.group_size}

    @classmethod
    def from_json(cls, data: dict) -> QuantConfig:
        """Parse `to_json`'s output."""
        return cls(bits=int(data["bits"]), group_size=data.get("group_size"))


def quantize_weight(
    weight: torch.Tensor, bits: int, group_size: int | None, absmax: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integers int8 [out, in] in [-qmax, qmax] and scales [out] (per channel) or [out, in / group_size]."""
    out_features, in_features = weight.shape
    qmax = 2 ** (bits - 1) - 1
    grouped = weight.float().reshape(out_features, -1, group_size or in_features)  # [out, groups, size]
    if absmax is None:
        absmax = grouped.abs().amax(dim=-1)  # [out, groups]
    scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    integers = torch.round(grouped / scale[..., None]).clamp(-qmax, qmax).to(torch.int8)
    scale = scale if group_size else scale[:, 0]
    return integers.reshape(out_features, in_features), scale


def pack_int4(integers: torch.Tensor) -> torch.Tensor:
    """int8 [out, in] with values in [-8, 7] -> uint8 [out, in / 2] (even column in the high nibble)."""
    nibbles = integers.to(torch.uint8) & 0x0F
    return (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in / 2] -> int8 [out, in], sign restored by an arithmetic shift."""
    signed = packed.view(torch.int8)
    high = signed >> 4
    low = (signed << 4) >> 4
    return torch.stack([high, low], dim=-1).reshape(packed.shape[0], -1)  # [out, in]


def dequantize(integers: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float weight [out, in] from integers int8 [out, in] and scales [out] or [out, groups]."""
    if scale.dim() == 1:
        return integers.to(dtype) * scale.to(dtype)[:, None]
    out_features, groups = scale.shape
    grouped = integers.to(dtype).reshape(out_features, groups, -1) * scale.to(dtype)[..., None]
    return grouped.reshape(out_features, -1)


class QuantizedProjection:
    """The quantized matmul shared by both parallel layouts; set up by `_quantize_into`."""

    bits: int
    group_size: int | None
    fused_kernel: FusedKernel | None = None

    def integers(self) -> torch.Tensor:
        """The weight as int8 [out, in]."""
        return unpack_int4(self.weight) if self.bits == 4 else self.weight

    def integer_rows(self, start: int, stop: int) -> torch.Tensor:
        """Output rows `start:stop` of the weight as int8 [rows, in], unpacking only those."""
        rows = self.weight[start:stop]
        return unpack_int4(rows) if self.bits == 4 else rows

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """This rank's weight [local out, local in] in `dtype`."""
        return dequantize(self.integers(), self.weight_scale, dtype)

    def select_kernel(self) -> None:
        """Probe torch's fused kernels for this layer's weight (again after its buffers were reloaded)."""
        if self.weight.device.type == "meta":
            self.fused_kernel = None
            return
        self.fused_kernel = select_fused_kernel(
            self.weight, self.integer_rows, self.weight_scale, self.bits, self.group_size
        )

    def project(self, hidden_states: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        dtype = hidden_states.dtype
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        # The fused kernels serve inference: they have no backward, and on CPU they compute in bfloat16. With
        # autograd on (QLoRA training) the differentiable dequantize-matmul in the model dtype runs.
        kernel = self.fused_kernel
        if kernel is not None and not torch.is_grad_enabled() and kernel.applies_to(flat):
            output = kernel.matmul(flat, self.weight)
            output = output.reshape(*hidden_states.shape[:-1], -1)
            return output if bias is None else output + bias
        if self.bits == 8 and self.weight_scale.dim() == 1:
            # Per-channel scales factor out of the product: one int8 -> float conversion, no weight multiply.
            output = F.linear(hidden_states, self.weight.to(dtype)) * self.weight_scale.to(dtype)
            return output if bias is None else output + bias
        return F.linear(hidden_states, self.dequantized_weight(dtype), bias)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return f"in={self.in_features}, out={self.out_features}, tp={self.tp.size}, int{self.bits}{group}"


class QuantizedColumnParallelLinear(QuantizedProjection, ColumnParallelLinear):
    """A `ColumnParallelLinear` whose weight is int8 or packed int4 with scales."""


class QuantizedRowParallelLinear(QuantizedProjection, RowParallelLinear):
    """A `RowParallelLinear` whose weight is int8 or packed int4 with scales."""


def _check_quantizable(module: nn.Module, bits: int, group_size: int | None) -> None:
    local_in = module.weight.shape[1]
    if group_size and local_in % group_size:
        raise ValueError(
            f"group_size {group_size} does not divide the {local_in} local input features of {module}"
        )
    if bits == 4 and local_in % 2:
        raise ValueError(f"int4 packing needs an even number of input features, got {local_in}")


def quantize_for(
    layer: nn.Module, weight: torch.Tensor, reduce_device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`layer`'s stored weight (int8, or packed int4) and scales (in `weight`'s dtype) for this rank's
    float `weight` [local out, local in]. A row-parallel per-row scale takes its absmax over the whole row:
    reduced over `layer.tp`'s group, on `reduce_device` (default `weight`'s device; NCCL wants CUDA)."""
    bits, group_size = layer.bits, layer.group_size
    chunks = weight.detach().split(QUANTIZE_ROWS)
    absmax = None
    if isinstance(layer, RowParallelLinear) and layer.tp.is_parallel and not group_size:
        absmax = torch.cat([chunk.float().abs().amax(dim=1, keepdim=True) for chunk in chunks])  # [out, 1]
        reduced = absmax.to(reduce_device or weight.device)
        dist.all_reduce(reduced, op=dist.ReduceOp.MAX, group=layer.tp.group)
        absmax = reduced.to(weight.device)
    out_features, in_features = weight.shape
    stored = torch.empty(
        out_features,
        in_features // 2 if bits == 4 else in_features,
        dtype=torch.uint8 if bits == 4 else torch.int8,
        device=weight.device,
    )
    scale_shape = (out_features, in_features // group_size) if group_size else (out_features,)
    scale = torch.empty(scale_shape, dtype=weight.dtype, device=weight.device)
    start = 0
    for chunk in chunks:  # every step is row-wise, so chunks of rows give the whole tensor's result
        rows = slice(start, start + chunk.shape[0])
        integers, chunk_scale = quantize_weight(
            chunk, bits, group_size, None if absmax is None else absmax[rows]
        )
        stored[rows] = pack_int4(integers) if bits == 4 else integers
        scale[rows] = chunk_scale
        start = rows.stop
    return stored, scale


def _quantized_layer(module: nn.Module, bits: int, group_size: int | None, stored, scale) -> nn.Module:
    """The quantized twin of a column- or row-parallel `module` holding `stored` and `scale`."""
    is_row = isinstance(module, RowParallelLinear)
    target_class = QuantizedRowParallelLinear if is_row else QuantizedColumnParallelLinear
    quantized = target_class.__new__(target_class)
    nn.Module.__init__(quantized)
    for name in ("in_features", "out_features", "tp", "gather_output", "final_bias"):
        if hasattr(module, name):
            setattr(quantized, name, getattr(module, name))
    quantized.bits, quantized.group_size = bits, group_size
    quantized.register_buffer("weight", stored)
    quantized.register_buffer("weight_scale", scale)
    quantized.bias = module.bias
    weight_rule = module.shard_rules["weight"]
    scale_rule = weight_rule if (group_size or not is_row) else REPLICATED
    quantized.shard_rules = {
        "weight": weight_rule,
        "weight_scale": scale_rule,
        "bias": module.shard_rules["bias"],
    }
    quantized.select_kernel()
    # A kernel's copy of the weight is derived, not state: loading new integers re-derives it.
    quantized.register_load_state_dict_post_hook(_reselect_kernel)
    return quantized


def _quantized_copy(module: nn.Module, bits: int, group_size: int | None) -> nn.Module:
    _check_quantizable(module, bits, group_size)
    shell = _quantized_shell(module, bits, group_size)
    stored, scale = quantize_for(shell, module.weight.detach())
    return _quantized_layer(module, bits, group_size, stored, scale)


def _quantized_shell(module: nn.Module, bits: int, group_size: int | None) -> nn.Module:
    """The quantized twin of `module` with empty meta buffers of the right shapes and dtypes."""
    _check_quantizable(module, bits, group_size)
    out_features, local_in = module.weight.shape
    stored = torch.empty(
        out_features,
        local_in // 2 if bits == 4 else local_in,
        dtype=torch.uint8 if bits == 4 else torch.int8,
        device="meta",
    )
    scale_shape = (out_features, local_in // group_size) if group_size else (out_features,)
    scale = torch.empty(scale_shape, dtype=module.weight.dtype, device="meta")
    return _quantized_layer(module, bits, group_size, stored, scale)


def _reselect_kernel(layer: QuantizedProjection, _incompatible_keys) -> None:
    layer.select_kernel()


def dequantized_copy(layer: QuantizedProjection, dtype: torch.dtype | None = None) -> nn.Module:
    """The plain column- or row-parallel layer whose weight is `layer`'s dequantized weight (in `dtype`,
    default the scales' dtype); the inverse of quantizing, up to the rounding the integers keep."""
    is_row = isinstance(layer, RowParallelLinear)
    plain_class = RowParallelLinear if is_row else ColumnParallelLinear
    plain = plain_class.__new__(plain_class)
    nn.Module.__init__(plain)
    for name in ("in_features", "out_features", "tp", "gather_output", "final_bias"):
        if hasattr(layer, name):
            setattr(plain, name, getattr(layer, name))
    weight = layer.dequantized_weight(torch.float32).to(dtype or layer.weight_scale.dtype)
    plain.weight = nn.Parameter(weight)
    plain.bias = layer.bias
    plain.shard_rules = {"weight": layer.shard_rules["weight"], "bias": layer.shard_rules["bias"]}
    return plain


def set_fused_kernels(model: nn.Module, enabled: bool) -> nn.Module:
    """Probe torch's fused kernels again for every quantized layer of `model`, or (`enabled=False`) run
    them all through the float dequantize-matmul, the reference numerics; loading a state dict re-probes."""
    for module in model.modules():
        if is_quantized(module):
            if enabled:
                module.select_kernel()
            else:
                module.fused_kernel = None
    return model


def is_quantized(module: nn.Module) -> bool:
    """True for a layer `quantize_` produced."""
    return isinstance(module, QuantizedProjection)


def _parallel_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, ColumnParallelLinear | RowParallelLinear)
        and not isinstance(module, QuantizedProjection)
    ]


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, layer)


def _check_settings(bits: int, group_size: int | None) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"quantization bits must be one of {SUPPORTED_BITS}, got {bits}")
    if group_size is not None and group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size}")


def quantize_(model: nn.Module, bits: int, group_size: int | None = None) -> nn.Module:
    """Replace every column- and row-parallel linear of `model` by its int8 / int4 version, in place.

    Covers the language model, the vision experts, the LM head, cross-attention and the EVA2-CLIP-E
    tower; plain `nn.Linear`s (GLU adapter, CogAgent's cross tower), embeddings and norms stay as they are.
    Apply after loading and after sharding, and before adding a LoRA adapter (QLoRA).
    """
    _check_settings(bits, group_size)
    with torch.no_grad():
        for name, module in _parallel_linears(model):
            _replace(model, name, _quantized_copy(module, bits, group_size))
    return model


def quantize_shells_(model: nn.Module, bits: int, group_size: int | None = None) -> nn.Module:
    """Like `quantize_`, on a model built on the meta device: each parallel linear becomes its quantized
    twin with empty meta integers and scales, for a streaming load to fill (no float weight is kept)."""
    _check_settings(bits, group_size)
    for name, module in _parallel_linears(model):
        _replace(model, name, _quantized_shell(module, bits, group_size))
    return model


def dequantize_(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every quantized layer of `model` by its plain dequantized version, in place (see
    `dequantized_copy`); keys become the unquantized ones (no `weight_scale`)."""
    targets = [(name, module) for name, module in model.named_modules() if is_quantized(module)]
    with torch.no_grad():
        for name, module in targets:
            _replace(model, name, dequantized_copy(module, dtype))
    return model


def weight_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of `module` (integers and scales for quantized layers)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def decode_linears(model: nn.Module) -> list[nn.Module]:
    """The parallel linears a language token passes through: what one decoding step reads.

    Vision experts, vision towers and the cross-attention key/value projection (computed once per image)
    are left out.
    """
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, ColumnParallelLinear | RowParallelLinear):
            continue
        if name.startswith(VISION_TOWER_PREFIXES) or "vision" in name:
            continue
        if name.endswith("cross_attention.key_value"):
            continue
        found.append(module)
    return found


__all__ = [
    "VISION_TOWER_PREFIXES",
    "QuantConfig",
    "QuantizedColumnParallelLinear",
    "QuantizedRowParallelLinear",
    "decode_linears",
    "dequantize",
    "dequantize_",
    "dequantized_copy",
    "is_quantized",
    "pack_int4",
    "quantize_",
    "quantize_for",
    "quantize_shells_",
    "quantize_weight",
    "set_fused_kernels",
    "unpack_int4",
    "weight_bytes",
]
