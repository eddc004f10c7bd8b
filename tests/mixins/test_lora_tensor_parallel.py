"""LoRA on column- and row-parallel layers: outputs and gradients at TP=2 equal TP=1 (2 gloo processes)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cogvlm.mixins.lora import LoraConfig, LoraLinear
from cogvlm.parallel.groups import TensorParallel
from cogvlm.parallel.layers import ColumnParallelLinear, RowParallelLinear
from cogvlm.parallel.sharding import ShardRule, shard_tensor, unshard_tensors

IN, OUT = 12, 18
CONFIG = LoraConfig(rank=2, alpha=4.0)


def _whole_and_shard(kind, tp: TensorParallel):
    """The same LoRA layer whole and as this rank's shard, with non-zero B."""
    torch.manual_seed(0)
    if kind == "column":
        whole = ColumnParallelLinear(IN, OUT, bias=True, parts=3)
        shard = ColumnParallelLinear(IN, OUT, bias=True, parts=3, tp=tp)
    else:
        whole = RowParallelLinear(IN, OUT, bias=True)
        shard = RowParallelLinear(IN, OUT, bias=True, tp=tp)
    rules = whole.shard_rules
    with torch.no_grad():
        for name in ("weight", "bias"):
            getattr(shard, name).copy_(shard_tensor(getattr(whole, name), rules[name], tp.rank, tp.size))
    whole_lora, shard_lora = LoraLinear(whole, CONFIG, 7), LoraLinear(shard, CONFIG, 7)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for index in range(whole_lora.parts):
            b = whole_lora.matrix_B[index]
            b.copy_(torch.randn(b.shape, generator=generator))
            rule = shard_lora.matrix_B.shard_rules[str(index)]
            shard_lora.matrix_B[index].copy_(shard_tensor(b, rule, tp.rank, tp.size))
    return whole_lora, shard_lora


def _gather(tensor, tp: TensorParallel) -> list[torch.Tensor]:
    pieces = [torch.empty_like(tensor) for _ in range(tp.size)]
    dist.all_gather(pieces, tensor.contiguous(), group=tp.group)
    return pieces


def _check(kind: str, tp: TensorParallel) -> None:
    whole, shard = _whole_and_shard(kind, tp)
    x = torch.randn(3, IN, generator=torch.Generator().manual_seed(5), requires_grad=True)
    x_shard = x.detach()
    if kind == "row":  # a row-parallel layer receives its slice of the input columns
        x_shard = x_shard.chunk(tp.size, dim=-1)[tp.rank]
    x_shard.requires_grad_(True)
    expected, actual = whole(x), shard(x_shard)
    (expected**2).sum().backward()
    # Each rank's loss covers its own output columns (column) or the whole output (row); in both cases
    # the gradients it sends back are those of the whole loss.
    (actual**2).sum().backward()
    if kind == "column":  # [batch, OUT / 2] per rank, holding its slice of each of the 3 parts
        actual = unshard_tensors(_gather(actual.detach(), tp), ShardRule(dim=1, parts=3))
    # Partial products summed across ranks in a different order: float32 rounding only.
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    expected_input_grad = x.grad if kind == "column" else x.grad.chunk(tp.size, dim=-1)[tp.rank]
    torch.testing.assert_close(x_shard.grad, expected_input_grad, atol=1e-5, rtol=1e-5)
    for name in ("matrix_A", "matrix_B"):
        for index in range(whole.parts):
            rule = getattr(shard, name).shard_rules[str(index)]
            grad = getattr(whole, name)[index].grad
            expected_grad = shard_tensor(grad, rule, tp.rank, tp.size)
            torch.testing.assert_close(getattr(shard, name)[index].grad, expected_grad, atol=1e-5, rtol=1e-5)


def _worker(rank: int, store_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        tp = TensorParallel(group=dist.group.WORLD, rank=rank, size=2)
        _check("column", tp)
        _check("row", tp)
    finally:
        dist.destroy_process_group()


def test_lora_outputs_and_gradients_are_the_same_at_tensor_parallel_size_two(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"),), nprocs=2, join=True)
