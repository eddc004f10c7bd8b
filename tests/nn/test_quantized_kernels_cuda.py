"""tinygemm's CUDA int4 layout, prepared in row blocks (skipped without a GPU; run by tools/gpu_figures.sh).

Kept apart from test_quantized_kernels.py, which needs the golden set, so that it runs on a bare GPU machine.
"""

from __future__ import annotations

import pytest
import torch

from cogvlm.nn.quantized import dequantize, pack_int4
from cogvlm.nn.quantized_kernels import PREPARE_ROWS, select_fused_kernel


@pytest.mark.skipif(not torch.cuda.is_available(), reason="tinygemm's CUDA layout needs a GPU")
def test_cuda_int4_layout_prepared_in_row_blocks_equals_the_whole_layers():
    out_features, in_features = 2 * PREPARE_ROWS + 64, 512
    integers = torch.randint(-8, 8, (out_features, in_features), dtype=torch.int8, device="cuda")
    scale = torch.rand(out_features, in_features // 128, dtype=torch.bfloat16, device="cuda") / 10
    kernel = select_fused_kernel(pack_int4(integers), lambda start, stop: integers[start:stop], scale, 4, 128)
    assert kernel is not None
    nibbles = (integers.to(torch.int32) + 8).to(torch.uint8)
    whole = torch._convert_weight_to_int4pack(((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).contiguous(), 8)
    assert torch.equal(kernel.packed_weight, whole)
    hidden = torch.randn(3, in_features, dtype=torch.bfloat16, device="cuda")
    expected = hidden.float() @ dequantize(integers, scale, torch.float32).t()
    got = kernel.matmul(hidden, pack_int4(integers)).float()
    torch.testing.assert_close(got, expected, atol=2e-2 * float(expected.abs().max()), rtol=0)
