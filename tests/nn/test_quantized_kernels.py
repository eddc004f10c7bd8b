"""torch's fused int8 / int4 kernels behind quantized layers: agreement, fallbacks, state dicts, compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cogvlm.inference.generate import generate_batch
from cogvlm.nn.quantized import dequantize, pack_int4, quantize_, quantize_weight
from cogvlm.nn.quantized_kernels import (
    CPU_INT4_MAX_ROWS,
    CPU_INT8_MAX_ROWS,
    PREPARE_ROWS,
    select_fused_kernel,
)
from cogvlm.parallel.layers import ColumnParallelLinear, RowParallelLinear
from tests.inference.test_engine import _config, _golden_cases, _request
from tests.nn.test_quantized import _quantized

# The CPU kernels compute in bfloat16: the input, the scales and the output are each rounded once to
# bfloat16 (relative 2^-9), the sums run in float32. Bound: 1% of the largest output.
BFLOAT16_KERNEL_RELATIVE = 1e-2


def _layer(kind, in_features: int, out_features: int, seed: int = 0, dtype=torch.float32) -> nn.Module:
    layer = kind(in_features, out_features, bias=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, in_features, generator=generator) / in_features**0.5)
        layer.bias.copy_(torch.randn(out_features, generator=generator))
    return nn.ModuleDict({"proj": layer}).to(dtype)


def _quantized_layer(bits, group_size, in_features, out_features, kind=ColumnParallelLinear, **kwargs):
    return quantize_(_layer(kind, in_features, out_features, **kwargs), bits, group_size)["proj"]


def _reference(layer, hidden: torch.Tensor) -> torch.Tensor:
    """The dequantize-matmul in float32."""
    weight = dequantize(layer.integers(), layer.weight_scale.float(), torch.float32)
    return hidden.float() @ weight.t() + layer.bias.detach().float()


def _rows_of(integers: torch.Tensor):
    return lambda start, stop: integers[start:stop]


def _inputs(rows: int, in_features: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(rows, in_features, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize(
    ("bits", "group_size", "in_features", "out_features", "kernel_group"),
    [
        (8, None, 512, 1536, 0),
        (4, None, 1408, 512, 128),  # one scale per row, repeated over 11 kernel groups of 128
        (4, 32, 512, 256, 32),
        (4, 512, 1024, 64, 256),  # a group of 512 is two kernel groups of 256 with one scale
    ],
    ids=["int8", "int4-per-row", "int4-g32", "int4-g512"],
)
@pytest.mark.parametrize("kind", [ColumnParallelLinear, RowParallelLinear], ids=["column", "row"])
def test_cpu_kernels_agree_with_the_dequantize_matmul(
    bits, group_size, in_features, out_features, kernel_group, kind
):
    layer = _quantized_layer(bits, group_size, in_features, out_features, kind)
    kernel = layer.fused_kernel
    assert kernel is not None and kernel.compute_dtype == torch.bfloat16 and kernel.group_size == kernel_group
    for rows in (1, 4):
        hidden = _inputs(rows, in_features)
        assert kernel.applies_to(hidden)
        with torch.inference_mode():
            got = layer(hidden[:, None])  # [rows, 1, in]: decoding's shape
        expected = _reference(layer, hidden)[:, None]
        assert got.dtype == torch.float32 and got.shape == expected.shape
        atol = BFLOAT16_KERNEL_RELATIVE * float(expected.abs().max())
        torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def test_a_bfloat16_model_runs_the_int8_kernel_in_its_own_dtype():
    layer = _quantized_layer(8, None, 512, 256, dtype=torch.bfloat16)
    assert layer.fused_kernel is not None and layer.weight_scale.dtype == torch.bfloat16
    hidden = _inputs(2, 512, torch.bfloat16)
    with torch.inference_mode():
        got = layer(hidden)
    expected = _reference(layer, hidden)
    assert got.dtype == torch.bfloat16
    atol = BFLOAT16_KERNEL_RELATIVE * float(expected.abs().max())
    torch.testing.assert_close(got.float(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize(
    ("bits", "max_rows"), [(8, CPU_INT8_MAX_ROWS), (4, CPU_INT4_MAX_ROWS)], ids=["int8", "int4"]
)
def test_more_rows_than_the_kernel_wins_on_run_the_float32_dequantize_matmul(bits, max_rows):
    layer = _quantized_layer(bits, None, 512, 256)
    few, many = _inputs(max_rows, 512), _inputs(max_rows + 1, 512)
    assert layer.fused_kernel.applies_to(few) and not layer.fused_kernel.applies_to(many)
    with torch.inference_mode():
        kernel_error = (layer(few) - _reference(layer, few)).abs().max()
        float_output = layer(many)
    # The same dequantized weight, other summation orders: float32 rounding of outputs of size ~3, far
    # below the kernel's bfloat16 error.
    torch.testing.assert_close(float_output, _reference(layer, many), atol=1e-5, rtol=1e-5)
    assert kernel_error > 1e-3


@pytest.mark.parametrize(
    ("bits", "group_size", "out_features", "dtype"),
    [
        (8, 16, 64, torch.float32),  # no grouped int8 kernel
        (4, 16, 64, torch.float32),  # tinygemm's smallest group is 32
        (4, None, 24, torch.float32),  # the CPU int4 packing needs outputs in blocks of 16
        (8, None, 64, torch.float16),  # the CPU kernels are fast in bfloat16 only
    ],
    ids=["int8-g16", "int4-g16", "int4-24-outputs", "float16"],
)
def test_schemes_without_a_kernel_fall_back_to_the_dequantize_matmul(bits, group_size, out_features, dtype):
    layer = _quantized_layer(bits, group_size, 64, out_features, dtype=dtype)
    assert layer.fused_kernel is None
    hidden = _inputs(3, 64, dtype)
    with torch.inference_mode():
        got = layer(hidden).float()
    # The model dtype's own matmul: float32 rounding, or float16's 2^-11 on outputs of size ~3.
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, _reference(layer, hidden), atol=tolerance, rtol=tolerance)


def test_the_probe_refuses_a_kernel_that_disagrees_with_the_reference():
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    integers, scale = quantize_weight(weight, 8, None)
    assert select_fused_kernel(integers, _rows_of(integers), scale, 8, None) is not None
    # The int8 kernel reads the stored weight; a stored weight other than the integers must not pass.
    assert select_fused_kernel(integers.flip(1).contiguous(), _rows_of(integers), scale, 8, None) is None


@pytest.mark.parametrize(
    ("bits", "group_size"), [(8, None), (4, None), (4, 32)], ids=["int8", "int4", "int4-g32"]
)
def test_state_dicts_keep_our_format_and_loading_one_rederives_the_kernel(bits, group_size):
    target = quantize_(_layer(ColumnParallelLinear, 256, 128, seed=0), bits, group_size)
    source = quantize_(_layer(ColumnParallelLinear, 256, 128, seed=1), bits, group_size)
    state = source.state_dict()
    assert set(state) == {"proj.weight", "proj.weight_scale", "proj.bias"}
    integers = source["proj"].integers()
    assert torch.equal(state["proj.weight"], pack_int4(integers) if bits == 4 else integers)
    hidden = _inputs(2, 256)
    with torch.inference_mode():
        before = target["proj"](hidden)
        target.load_state_dict(state)
        after, expected = target["proj"](hidden), source["proj"](hidden)
    assert target["proj"].fused_kernel is not None
    assert all(torch.equal(value, state[key]) for key, value in target.state_dict().items())
    assert torch.equal(after, expected) and not torch.equal(after, before)


@pytest.mark.parametrize(("bits", "group_size"), [(8, None), (4, None)], ids=["int8", "int4"])
def test_compiled_decoding_runs_the_kernels_and_matches_eager_decoding(bits, group_size):
    model = _quantized(bits, group_size)
    assert all(m.fused_kernel is not None for m in model.modules() if hasattr(m, "fused_kernel"))
    requests = [_request(name) for name in _golden_cases()]
    outputs = {
        step: generate_batch(model, requests, _config(decode_step=step), keep_step_logits=True)
        for step in ("eager", "compiled")
    }
    for eager, compiled in zip(outputs["eager"], outputs["compiled"], strict=True):
        assert compiled.token_ids == eager.token_ids
        # The same aten kernels on the same inputs; fused casts round alike: float32 noise at most.
        torch.testing.assert_close(compiled.step_logits, eager.step_logits, atol=1e-4, rtol=0)


class LargestOutput(TorchDispatchMode):
    """The most elements of any (floating, or of any dtype) tensor an op returned while active."""

    largest = largest_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                if tensor.is_floating_point():
                    self.largest = max(self.largest, tensor.numel())
                self.largest_bytes = max(self.largest_bytes, tensor.numel() * tensor.element_size())
        return out


def test_choosing_a_kernel_never_builds_a_float_copy_of_the_whole_weight():
    """The probe compares a few rows: a 17B load must not hold a float32 copy of its LM head."""
    LargestFloatOutput = LargestOutput

    rows, columns = 4096, 512
    integers = torch.randint(-127, 128, (rows, columns), dtype=torch.int8)
    scale = torch.rand(rows, dtype=torch.bfloat16) / 100
    with LargestFloatOutput() as mode:
        kernel = select_fused_kernel(integers, _rows_of(integers), scale, 8, None)
    assert kernel is not None  # the probe still compared and accepted the kernel
    assert mode.largest < rows * columns // 4


def test_int4_layouts_are_prepared_in_row_blocks_equal_to_the_whole_layers_and_small():
    """tinygemm's layout of a big layer is made PREPARE_ROWS rows at a time: the same bytes as the whole
    layer's, with no int32 or int8 copy of the whole weight (a load's peak would hold it beside the model)."""
    out_features, in_features = 2 * PREPARE_ROWS + 64, 256
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(3))
    layer = quantize_(_layer(ColumnParallelLinear, in_features, out_features), 4, 64)["proj"]
    layer.weight_scale.data = layer.weight_scale.to(torch.bfloat16)
    integers, _ = quantize_weight(weight, 4, 64)
    layer.weight.copy_(pack_int4(integers))
    with LargestOutput() as mode:
        layer.select_kernel()
    kernel = layer.fused_kernel
    assert kernel is not None and kernel.packed_weight is not None
    whole = torch._convert_weight_to_int4pack_for_cpu((integers.to(torch.int32) + 8).contiguous(), 1)
    assert torch.equal(kernel.packed_weight, whole)
    packed_bytes = layer.weight.numel()  # uint8, two weights a byte
    # Only the kernel's own packed copy (the size of the stored weight) is as big as the weight; every
    # intermediate covers PREPARE_ROWS rows at most (int32: 8 bytes per stored byte).
    assert mode.largest_bytes <= max(packed_bytes, 8 * PREPARE_ROWS * in_features // 2)
    assert mode.largest_bytes < 8 * packed_bytes // 2
