"""torch's fused weight-only int8 / int4 matmuls, prepared for one quantized layer and probed once.

They serve inference (autograd off): they have no backward, so training runs the dequantize-matmul.

Our stored format stays the checkpoint's (int8 [out, in], or int4 packed two per byte with element 2j in
the high nibble, plus scales); a kernel that wants another layout gets its own copy here, held beside the
layer's buffers and never in its state dict (so int4 layers with a kernel hold their integers twice).

- int8, one scale per row: `_weight_int8pack_mm` reads our int8 weight as it is (CUDA and CPU).
- int4: tinygemm (`_weight_int4pack_mm` on CUDA, `_weight_int4pack_mm_for_cpu` on CPU) takes unsigned
  nibbles q + 8 in its own packed layout and (scale, zero) pairs per group of 32-256 inputs, zero = 0 for
  our symmetric scheme. On CPU a per-row scale, or a group that several kernel groups make up, is repeated
  over them.

On CPU these kernels are vectorised for bfloat16 only (their float32 versions are scalar, ~10x slower than
a float32 matmul), so a float32 model's activations are rounded to bfloat16 on the way in and the result
is bfloat16 on the way out: error of the order of bfloat16's 2^-8, like a bfloat16 model's. They win when
few rows share each weight read (decoding); with many rows (prefill) the float matmul of the dequantized
weight is as fast, and keeps float32, so above `max_rows` input rows the layer does that instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Group sizes tinygemm accepts (CUDA and CPU).
INT4_KERNEL_GROUP_SIZES = (32, 64, 128, 256)
# Input rows up to which the CPU kernels beat the dequantize-matmul. Measured (CPU time, one thread, AVX-512
# with bf16) on small-cogvlm's four LLM shapes (512-2816 outputs, 512-1408 inputs): int8 kernel / float32
# path 0.43 at 1 row, 0.81 at 16, 1.03 at 32, 1.08 at 64, 1.23 at 256; int4 kernel / dequantize 0.02 at 1,
# 0.72 at 128, 0.89 at 256, 0.97 at 1024, 1.09 at 2048.
CPU_INT8_MAX_ROWS = 32
CPU_INT4_MAX_ROWS = 1024
# A probe accepts a kernel whose result is within this fraction of the reference's largest output: a wrong
# layout or scale is off by the size of the output itself, bfloat16 rounding by ~2^-8 of it.
PROBE_RELATIVE_TOLERANCE = 2e-2
PROBE_ROWS = 256  # output rows the probe compares (all of them in small layers)
# tinygemm's layouts are made of independent blocks of output rows (8 on CUDA, at most 64 on CPU), so a layout
# is prepared this many rows at a time: its int32 and int8 intermediates stay a fraction of the weight.
PREPARE_ROWS = 1024

# `integer_rows(start, stop)`: the layer's integers int8 [stop - start, in] for those output rows.
IntegerRows = Callable[[int, int], torch.Tensor]


@dataclass(frozen=True, eq=False)
class FusedKernel:
    """A fused weight-only matmul for one layer: which kernel, in which dtype, and its prepared tensors."""

    bits: int
    device_type: str
    compute_dtype: torch.dtype
    max_rows: int | None = None
    # int8: the scales [out] in `compute_dtype` (inductor's lowering needs them as an input, not a cast);
    # int4: (scale, zero) pairs [groups, out, 2]
    scales: torch.Tensor | None = None
    group_size: int = 0  # int4: inputs per kernel group
    packed_weight: torch.Tensor | None = None  # int4: tinygemm's layout

    def applies_to(self, flat: torch.Tensor) -> bool:
        """True when `flat` [rows, in] is on this kernel's device and has few enough rows for it to win."""
        return flat.device.type == self.device_type and (
            self.max_rows is None or flat.shape[0] <= self.max_rows
        )

    def matmul(self, flat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """`flat` [rows, in] @ the dequantized `weight` (the layer's).T: [rows, out] in `flat`'s dtype."""
        inputs = flat.to(self.compute_dtype)
        if self.bits == 8:
            output = torch._weight_int8pack_mm(inputs, weight, self.scales)
        elif self.device_type == "cpu":
            output = torch._weight_int4pack_mm_for_cpu(
                inputs, self.packed_weight, self.group_size, self.scales
            )
        else:
            output = torch._weight_int4pack_mm(inputs, self.packed_weight, self.group_size, self.scales)
        return output.to(flat.dtype)


def select_fused_kernel(
    weight: torch.Tensor, integer_rows: IntegerRows, scale: torch.Tensor, bits: int, group_size: int | None
) -> FusedKernel | None:
    """The fused kernel for a layer (stored `weight`, its integers by rows, scales [out] or [out, groups]),
    or None. A candidate is kept only if it runs and agrees with the dequantize-matmul on a random probe.
    """
    if weight.device.type not in ("cpu", "cuda"):
        return None
    out_features, in_features = scale.shape[0], integer_rows(0, 1).shape[1]
    generator = torch.Generator(device=weight.device).manual_seed(0)
    probe = torch.randn(2, in_features, generator=generator, device=weight.device, dtype=scale.dtype)
    try:  # preparing the layout checks shapes too (the CPU int4 packing wants outputs in blocks of 16)
        shape = (out_features, in_features)
        candidate = _candidate(integer_rows, shape, scale, bits, group_size, weight.device.type)
        if candidate is None:
            return None
        got = candidate.matmul(probe, weight).float()[:, :PROBE_ROWS]
    except (RuntimeError, NotImplementedError):
        return None
    # The reference product on the first rows only: a float32 copy of a whole weight would be a load's
    # largest device allocation (0.5 GB for a 17B model's LM head).
    rows, row_scale = integer_rows(0, PROBE_ROWS), scale[:PROBE_ROWS]
    expected = F.linear(probe.float(), rows.float() * _per_input_scale(row_scale, in_features).float())
    tolerance = PROBE_RELATIVE_TOLERANCE * float(expected.abs().max().clamp_min(1e-12))
    return candidate if torch.allclose(got, expected, rtol=0, atol=tolerance) else None


def _candidate(
    integer_rows: IntegerRows,
    shape: tuple[int, int],
    scale: torch.Tensor,
    bits: int,
    group_size: int | None,
    device_type: str,
) -> FusedKernel | None:
    dtype = scale.dtype
    if device_type == "cuda":
        if bits == 8 and group_size is None:
            return FusedKernel(8, "cuda", dtype, scales=scale)
        if bits == 4 and dtype == torch.bfloat16 and group_size in INT4_KERNEL_GROUP_SIZES:
            return _int4_kernel(integer_rows, shape, scale, group_size, "cuda", None)
        return None
    if device_type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return None
    if bits == 8:
        if group_size is not None:
            return None
        return FusedKernel(8, "cpu", torch.bfloat16, CPU_INT8_MAX_ROWS, scale.to(torch.bfloat16).contiguous())
    kernel_group = _kernel_group_size(group_size or shape[1])
    if kernel_group is None:
        return None
    return _int4_kernel(integer_rows, shape, scale, kernel_group, "cpu", CPU_INT4_MAX_ROWS)


def _kernel_group_size(group_size: int) -> int | None:
    """The largest tinygemm group size dividing `group_size`: its scale repeats over whole kernel groups."""
    return next((size for size in reversed(INT4_KERNEL_GROUP_SIZES) if group_size % size == 0), None)


def _per_input_scale(scale: torch.Tensor, in_features: int) -> torch.Tensor:
    """Scales [out] or [out, groups] -> the scale of every weight element, [out, in]."""
    per_row = scale[:, None] if scale.dim() == 1 else scale
    return per_row.repeat_interleave(in_features // per_row.shape[1], dim=1)


def _int4_kernel(
    integer_rows: IntegerRows,
    shape: tuple[int, int],
    scale: torch.Tensor,
    group_size: int,
    device_type: str,
    max_rows: int | None,
) -> FusedKernel:
    """tinygemm's layout of a weight of `shape` [out, in]: unsigned nibbles q + 8, (scale, zero = 0) per group
    of `group_size` inputs."""
    out_features, in_features = shape
    blocks = [
        _int4_layout(integer_rows(start, min(start + PREPARE_ROWS, out_features)), device_type)
        for start in range(0, out_features, PREPARE_ROWS)
    ]
    packed = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    del blocks
    per_row = scale[:, None] if scale.dim() == 1 else scale  # [out, our groups]
    kernel_groups_per_group = in_features // per_row.shape[1] // group_size
    scales = per_row.repeat_interleave(kernel_groups_per_group, dim=1)  # [out, kernel groups]
    scales = scales.t().to(torch.bfloat16).contiguous()  # [kernel groups, out]
    scales_and_zeros = torch.stack([scales, torch.zeros_like(scales)], dim=-1)  # [groups, out, 2]
    return FusedKernel(4, device_type, torch.bfloat16, max_rows, scales_and_zeros, group_size, packed)


def _int4_layout(integers: torch.Tensor, device_type: str) -> torch.Tensor:
    """tinygemm's packed weight for integers int8 [rows, in] (rows: a whole number of its row blocks)."""
    unsigned = (integers.to(torch.int32) + 8).contiguous()  # [rows, in], values in [1, 15]
    if device_type == "cpu":
        return torch._convert_weight_to_int4pack_for_cpu(unsigned, 1)
    nibbles = unsigned.to(torch.uint8)
    return torch._convert_weight_to_int4pack(((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).contiguous(), 8)
