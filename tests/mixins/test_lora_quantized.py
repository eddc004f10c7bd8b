"""LoRA on quantized linears (QLoRA): a frozen integer base, trainable float factors, plain merged layers."""

from __future__ import annotations

import pytest
import torch

from cogvlm.checkpoints.loading import load_model
from cogvlm.mixins.lora import LoraConfig, add_lora, is_lora_parameter, lora_layers, merge_lora
from cogvlm.nn.quantized import dequantize, dequantize_, is_quantized, quantize_, set_fused_kernels
from cogvlm.parallel.layers import ColumnParallelLinear, RowParallelLinear
from cogvlm.train.config import TrainableConfig
from cogvlm.train.trainable import apply_trainable, trainable_filter
from tests.golden import golden_dir
from tests.mixins.test_lora import ALL_COGVLM_TARGETS, _inputs, _logits, _randomise_b

COGVLM_DIR = golden_dir() / "cogvlm"
SCHEMES = [(8, None), (4, 16)]
SCHEME_IDS = ["int8", "int4-g16"]


def _qlora_model(bits: int, group_size: int | None):
    model, _ = load_model(COGVLM_DIR / "sat_checkpoint")
    quantize_(model, bits, group_size)
    add_lora(model, LoraConfig(rank=4, alpha=8.0, targets=ALL_COGVLM_TARGETS))
    return model


def _quantized_state(model) -> dict[str, torch.Tensor]:
    """Copies of the integers and scales of every quantized layer."""
    return {
        key: value.clone()
        for key, value in model.state_dict().items()
        if not value.is_floating_point() or key.endswith("weight_scale")
    }


@pytest.mark.parametrize(("bits", "group_size"), SCHEMES, ids=SCHEME_IDS)
def test_lora_wraps_quantized_layers_with_float_factors_and_leaves_the_logits_unchanged(bits, group_size):
    quantized, _ = load_model(COGVLM_DIR / "sat_checkpoint")
    quantize_(quantized, bits, group_size)
    model = _qlora_model(bits, group_size)
    wrapped = lora_layers(model)
    assert wrapped and all(is_quantized(layer.original) for layer in wrapped.values())
    for layer in wrapped.values():
        assert layer.matrix_A[0].dtype == layer.matrix_B[0].dtype == torch.float32
    parameter_names = {name for name, _ in model.named_parameters()}
    integer_keys = [key for key, value in model.state_dict().items() if not value.is_floating_point()]
    assert integer_keys and not parameter_names & set(integer_keys)  # buffers: no optimizer can hold them
    assert {f"{path}.original.weight" for path in wrapped} <= set(integer_keys)
    # B starts at zero: the adapter adds exactly nothing.
    assert torch.equal(_logits(model), _logits(quantized))


@pytest.mark.parametrize(("bits", "group_size"), SCHEMES, ids=SCHEME_IDS)
def test_training_moves_only_the_adapter_and_leaves_the_quantized_base_bit_identical(bits, group_size):
    model = _qlora_model(bits, group_size)
    report = apply_trainable(model, trainable_filter(TrainableConfig(), has_lora=True))
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert report.trainable == sum(p.numel() for _, p in trainable)
    assert all(is_lora_parameter(name) for name, _ in trainable)
    frozen_before = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    quantized_before = _quantized_state(model)
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=1e-2)
    input_ids, ctx = _inputs()
    targets = input_ids[:, 1:]
    losses = []
    for _ in range(3):
        logits = model(input_ids, ctx).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.5, losses
    # The vision tower's adapter learns through quantized EVA layers (gradients flow through integers).
    eva_factors = [p for name, p in trainable if name.startswith("mixins.eva.") and ".matrix_B." in name]
    assert eva_factors and all(p.grad is not None and p.grad.abs().sum() > 0 for p in eva_factors)
    assert all(p.grad is None for name, p in model.named_parameters() if name in frozen_before)
    after = model.state_dict()
    assert all(torch.equal(after[key], value) for key, value in quantized_before.items())
    assert all(torch.equal(after[name], value) for name, value in frozen_before.items())


@pytest.mark.parametrize(("bits", "group_size"), SCHEMES, ids=SCHEME_IDS)
def test_merging_gives_plain_float_layers_with_the_qlora_models_logits(bits, group_size):
    model = _qlora_model(bits, group_size)
    _randomise_b(model)
    path = "transformer.layers.0.attention.query_key_value"
    layer = lora_layers(model)[path]
    expected_weight = dequantize(layer.original.integers(), layer.original.weight_scale, torch.float32)
    expected_weight = expected_weight + layer.delta_weight()
    # The float32 dequantize-matmul, not the bfloat16 CPU kernels (their error is bounded in tests/nn).
    qlora_logits = _logits(set_fused_kernels(model, enabled=False))
    merge_lora(model)
    dequantize_(model)
    merged = model.get_submodule(path)
    assert type(merged) is ColumnParallelLinear
    assert torch.equal(merged.weight, expected_weight)
    assert not any(is_quantized(module) for module in model.modules())
    base_keys = set(load_model(COGVLM_DIR / "sat_checkpoint")[0].state_dict())
    assert set(model.state_dict()) == base_keys
    assert all(value.dtype == torch.float32 for value in model.state_dict().values())
    # W_deq + BA formed once in float32, against x W_deq^T + (x A^T) B^T (int8 per row: (x q^T) * s):
    # float32 rounding on logits |x| < 5.
    torch.testing.assert_close(_logits(model), qlora_logits, atol=2e-5, rtol=0)


def test_a_row_parallel_quantized_layer_merges_back_to_a_row_parallel_layer():
    model = _qlora_model(8, None)
    merge_lora(model)
    assert type(model.get_submodule("transformer.layers.0.attention.dense")) is RowParallelLinear


@pytest.mark.parametrize("bits", [8, 4])
def test_the_fused_kernel_serves_inference_and_autograd_runs_the_dequantize_matmul(bits):
    # torch's fused kernels have no backward (and compute in bfloat16 on CPU): QLoRA training must not
    # meet them, even in a layer whose own input needs no gradient.
    model, _ = load_model(COGVLM_DIR / "sat_checkpoint")
    quantize_(model, bits)
    layer = model.get_submodule(f"transformer.layers.{model.config.llm.num_layers - 1}.mlp.dense_4h_to_h")
    assert layer.fused_kernel is not None  # the CPU kernels are probed in by default
    hidden = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(0))
    reference = hidden @ dequantize(layer.integers(), layer.weight_scale, torch.float32).t()
    with torch.no_grad():
        kernel_output = layer(hidden)
    frozen_input_output = layer(hidden)
    trainable_input = hidden.clone().requires_grad_(True)
    output = layer(trainable_input)
    output.sum().backward()
    assert trainable_input.grad is not None
    # With autograd on, the float32 dequantize-matmul: float32 rounding of outputs of size ~1.
    for got in (frozen_input_output, output.detach()):
        torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    # The kernel computes in bfloat16: two roundings of 2^-9 (input, output) of values of size ~1.
    torch.testing.assert_close(kernel_output, reference, atol=2e-2, rtol=1e-2)
    assert not torch.allclose(kernel_output, reference, atol=1e-5, rtol=1e-5)  # the kernel did run
