"""Antialiased bicubic resize of 8-bit images, pixel for pixel what Pillow 13.0.0's `Image.resize` gives.

The official preprocessing resizes with PIL, whose results changed between Pillow 12 and 13 (13 runs the
vertical pass first when the height shrinks more than twice as much as the width). Doing the arithmetic
here makes our pixels a function of the image alone, whatever Pillow is installed. The numbers follow
Pillow's `Resample.c` for 8-bit bands, with the default `box` and `reducing_gap=None`:

* each axis is a separate pass with the bicubic kernel (a = -0.5) stretched by the downscale factor (the
  antialiasing); the taps are weighted in float64, normalised to sum 1, then turned into fixed point with
  22 fractional bits, rounded half away from zero;
* a pass gives `clip((2**21 + sum(pixel * weight)) >> 22, 0, 255)`: each pass rounds to 8 bits;
* Pillow 13 runs the vertical pass first when `in_h - out_h > 0` and `in_h - out_h > 2 * (in_w - out_w)`,
  else the horizontal one; an axis whose size does not change is skipped.

The kernel's float64 operations are Pillow's, in its order; that matches Pillow's x86-64 wheels, whose C is
compiled without fused multiply-add (a build that fuses could round a rare weight differently).

A pass is a float32 product with the banded weight matrix (cached per size pair), computed by
`embedding_bag` with per-sample weights, which is exactly a sparse-times-dense product and a fast one, a strip
of the image at a time so that a strip's work stays in cache. float32 cannot hold the 31-bit sums exactly,
so each output whose float sum lies within a bound of the float error from a rounding boundary is
recomputed in int64: the results are exact, and a fraction of a percent of the outputs take that path.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Pillow's fixed point: 32 bits less 8 for the pixel and 2 for sums that overshoot [0, 1].
PRECISION_BITS = 22
_KERNEL_SUPPORT = 2.0  # the bicubic kernel is zero for |x| >= 2
_FLOAT32_UNIT_ROUNDOFF = 2.0**-24
# float32 values in (and out) per strip: 1 MB keeps a strip's work in cache. With several torch threads a
# strip is one OpenMP parallel region, which on a busy machine can wait a whole scheduler time slice for a
# descheduled thread; 16 MB strips make few regions, at some cost in cache misses.
_STRIP_VALUES = 1 << 18
_THREADED_STRIP_VALUES = 1 << 22
_EXACT_BATCH_VALUES = 1 << 20  # int64 products per batch of exact recomputation


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5), with its float64 operations in its order."""
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def bicubic_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's fixed-point weights for resizing one axis from `n_in` to `n_out` pixels.

    Returns:
        starts: int64 [n_out], the first input pixel of each output pixel.
        weights: int64 [n_out, taps], the weights of input pixels `starts[o] + t` (zero past the last tap).
    """
    scale = float(n_in) / n_out
    filter_scale = max(scale, 1.0)
    support = _KERNEL_SUPPORT * filter_scale
    window = math.ceil(support) * 2 + 1
    centers = (np.arange(n_out) + 0.5) * scale
    # C's (int) cast truncates toward zero; negative starts are clamped to 0 either way.
    starts = np.maximum(np.trunc(centers - support + 0.5).astype(np.int64), 0)
    stops = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), n_in)
    taps = np.arange(window)
    in_window = taps[None, :] < (stops - starts)[:, None]  # [n_out, window]
    offsets = (taps[None, :] + starts[:, None]) - centers[:, None] + 0.5
    weights = np.where(in_window, _bicubic(offsets * (1.0 / filter_scale)), 0.0)
    # Pillow adds the taps up one after the other; cumsum does too, so the float64 totals are the same.
    totals = np.cumsum(weights, axis=1)[:, -1:]
    weights = np.where(totals != 0.0, weights / np.where(totals == 0.0, 1.0, totals), weights)
    scaled = weights * float(1 << PRECISION_BITS)
    fixed = np.where(weights < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int64)
    return starts, fixed[:, : int((stops - starts).max())]


@dataclass(frozen=True)
class AxisPlan:
    """One pass from `n_in` to `n_out` pixels of `channels` interleaved values; built once per sizes.

    Row `o * channels + c` of the pass is channel c of output pixel o; it reads the input values at
    `starts[row] + t * channels` for its taps t. `columns`, `offsets` and `values` hold the nonzero
    weights row after row (the banded matrix in CSR form), as `torch.nn.functional.embedding_bag` takes them.
    """

    n_in: int
    n_out: int
    channels: int
    starts: np.ndarray  # int64 [n_out * channels]
    weights: np.ndarray  # int64 [n_out * channels, taps], Pillow's fixed point
    columns: torch.Tensor  # int64 [nonzero], the input row of each nonzero weight
    offsets: torch.Tensor  # int64 [n_out * channels], where each output row's weights begin
    values: torch.Tensor  # float32 [nonzero]: weight / 2**22, exact (the weights fit in 24 bits)
    margin: float  # float sums nearer than this to a rounding boundary are recomputed exactly


def _rounding_margin(weights: np.ndarray) -> float:
    """Twice a bound on the float32 error of `sum(pixel * weight) / 2**22` for pixels in [0, 255].

    A float32 dot product of n terms, summed in any order (fused or not), errs by at most
    n*u/(1 - n*u) times the sum of the terms' magnitudes, u = 2**-24 (Higham, Accuracy and Stability
    of Numerical Algorithms, section 3.1). Terms with weight 0 are exact and do not count.
    """
    taps = int((weights != 0).sum(axis=1).max())
    gamma = taps * _FLOAT32_UNIT_ROUNDOFF / (1.0 - taps * _FLOAT32_UNIT_ROUNDOFF)
    magnitude = 255.0 * float(np.abs(weights).sum(axis=1).max()) / (1 << PRECISION_BITS)
    return 2.0 * gamma * magnitude


@functools.lru_cache(maxsize=32)
def axis_plan(n_in: int, n_out: int, channels: int = 1) -> AxisPlan:
    """The plan of one pass, cached: the same few size pairs recur (one per source size and view)."""
    starts, weights = bicubic_weights(n_in, n_out)
    starts = (starts[:, None] * channels + np.arange(channels)[None, :]).reshape(-1)
    weights = np.repeat(weights, channels, axis=0)
    starts.setflags(write=False)
    weights.setflags(write=False)
    nonzero = weights != 0  # zero past each row's last tap, so every nonzero column is in the image
    columns = (starts[:, None] + channels * np.arange(weights.shape[1])[None, :])[nonzero]
    offsets = np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))[:-1]])
    values = (weights[nonzero] / float(1 << PRECISION_BITS)).astype(np.float32)
    return AxisPlan(
        n_in,
        n_out,
        channels,
        starts,
        weights,
        torch.from_numpy(columns),
        torch.from_numpy(offsets),
        torch.from_numpy(values),
        _rounding_margin(weights),
    )


def _exact_values(source: np.ndarray, plan: AxisPlan, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Pillow's integer results of plan rows `rows` for columns `columns` of uint8 `source` [n_in*C, M]."""
    taps = np.arange(plan.weights.shape[1]) * plan.channels
    positions = np.minimum(plan.starts[rows][:, None] + taps[None, :], source.shape[0] - 1)
    pixels = source[positions, columns[:, None]].astype(np.int64)  # [k, taps]; weight 0 where clamped
    sums = (pixels * plan.weights[rows]).sum(axis=1)
    return np.clip((sums + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS, 0, 255)


def _resample_strip(plan: AxisPlan, strip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pass over float32 `strip` [n_in * C, s]: uint8 [n_out * C, s], and the flat indices of the
    outputs whose float sum is too near a rounding boundary to be trusted."""
    # embedding_bag with weights is a sparse-times-dense product: row r sums values * strip[columns].
    sums = F.embedding_bag(
        plan.columns, torch.from_numpy(strip), plan.offsets, mode="sum", per_sample_weights=plan.values
    ).numpy()  # [n_out * C, s], about sum(pixel * weight) / 2**22
    rounded = np.rint(sums)  # ties go to even, not up as in Pillow, but ties are always recomputed
    distance = np.abs(np.subtract(sums, rounded, out=sums), out=sums)  # 0.5 at a rounding boundary
    suspects = np.flatnonzero(distance >= 0.5 - plan.margin)
    return np.clip(rounded, 0, 255, out=rounded).astype(np.uint8), suspects


def _recompute(source: np.ndarray, plan: AxisPlan, result: np.ndarray, suspects: list[np.ndarray]) -> None:
    """Overwrite the suspect outputs (flat indices into `result` [n_out*C, M]) with exact values."""
    flat = np.concatenate(suspects)
    batch = max(1, _EXACT_BATCH_VALUES // plan.weights.shape[1])
    for first in range(0, flat.size, batch):
        rows, columns = np.divmod(flat[first : first + batch], result.shape[1])
        result[rows, columns] = _exact_values(source, plan, rows, columns)


def _strip_length(plan: AxisPlan) -> int:
    """Columns per strip, so that a strip's input and output hold about a strip's worth of values each."""
    values = _STRIP_VALUES if torch.get_num_threads() == 1 else _THREADED_STRIP_VALUES
    return max(1, values // (plan.channels * max(plan.n_in, plan.n_out)))


def resample_rows(pixels: np.ndarray, plan: AxisPlan) -> np.ndarray:
    """The vertical pass: uint8 [n_in, N] -> uint8 [n_out, N], N = width * channels (a 1-channel plan)."""
    result = np.empty((plan.n_out, pixels.shape[1]), dtype=np.uint8)
    step, suspects = _strip_length(plan), []
    for first in range(0, pixels.shape[1], step):
        strip = pixels[:, first : first + step].astype(np.float32, order="C")  # [n_in, s]
        result[:, first : first + step], flat = _resample_strip(plan, strip)
        rows, columns = np.divmod(flat, strip.shape[1])
        suspects.append(rows * pixels.shape[1] + columns + first)
    _recompute(pixels, plan, result, suspects)
    return result


def resample_columns(pixels: np.ndarray, plan: AxisPlan) -> np.ndarray:
    """The horizontal pass: uint8 [M, n_in * C] -> uint8 [M, n_out * C], on transposed strips of rows."""
    result = np.empty((pixels.shape[0], plan.n_out * plan.channels), dtype=np.uint8)
    step, suspects = _strip_length(plan), []
    for first in range(0, pixels.shape[0], step):
        strip = pixels[first : first + step].T.astype(np.float32, order="C")  # [n_in * C, s]
        block, flat = _resample_strip(plan, strip)
        result[first : first + step] = block.T  # [s, n_out * C]
        rows, columns = np.divmod(flat, strip.shape[1])
        suspects.append(rows * pixels.shape[0] + columns + first)
    _recompute(pixels.T, plan, result.T, suspects)
    return result


def is_vertical_first(in_width: int, in_height: int, out_width: int, out_height: int) -> bool:
    """Pillow 13's pass order: vertical first when the height shrinks more than twice as much as the width."""
    shrink = in_height - out_height
    return shrink > 0 and shrink > 2 * (in_width - out_width)


def _check_arguments(pixels: np.ndarray, width: int, height: int) -> None:
    """Refuse anything but uint8 [H, W, C] pixels and positive integer sizes, naming the culprit."""
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(
            f"resize_bicubic needs uint8 pixels [height, width, channels], got {type(pixels).__name__} "
            f"with dtype {getattr(pixels, 'dtype', None)} and shape {getattr(pixels, 'shape', None)}"
        )
    if 0 in pixels.shape:
        raise ValueError(f"resize_bicubic: the image is empty (shape {pixels.shape})")
    for name, size in (("width", width), ("height", height)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"resize_bicubic: {name} must be a positive int, got {size!r}")


def resize_bicubic(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [height, width, C], identical to Pillow 13.0.0's `resize(size, BICUBIC)`."""
    _check_arguments(pixels, width, height)
    in_height, in_width, channels = pixels.shape
    width, height = int(width), int(height)
    if (width, height) == (in_width, in_height):
        return pixels.copy()
    image = np.ascontiguousarray(pixels).reshape(in_height, in_width * channels)  # [H, W * C]
    vertical = axis_plan(in_height, height) if height != in_height else None
    horizontal = axis_plan(in_width, width, channels) if width != in_width else None
    if vertical is not None and (horizontal is None or is_vertical_first(in_width, in_height, width, height)):
        image, vertical = resample_rows(image, vertical), None
    if horizontal is not None:
        image = resample_columns(image, horizontal)
    if vertical is not None:
        image = resample_rows(image, vertical)
    return image.reshape(height, width, channels)
