"""The four tensor-parallel communication steps as autograd functions.

Each takes the process group explicitly; at size 1 each is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from cogvlm.parallel.groups import TensorParallel


def _all_reduce(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    tensor = tensor.contiguous()
    dist.all_reduce(tensor, group=tp.group)
    return tensor


def _split_last_dim(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    width = tp.divide(tensor.shape[-1], "last dimension")
    return tensor[..., tp.rank * width : (tp.rank + 1) * width].contiguous()


def _gather_last_dim(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    tensor = tensor.contiguous()
    pieces = [torch.empty_like(tensor) for _ in range(tp.size)]
    dist.all_gather(pieces, tensor, group=tp.group)
    return torch.cat(pieces, dim=-1)


class _CopyToParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, tp):
        ctx.tp = tp
        return tensor

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.clone(), ctx.tp), None


class _ReduceFromParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, tp):
        return _all_reduce(tensor.clone(), tp)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, tp):
        ctx.tp = tp
        return _gather_last_dim(tensor, tp)

    @staticmethod
    def backward(ctx, grad):
        return _split_last_dim(grad, ctx.tp), None


class _ScatterToParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, tp):
        ctx.tp = tp
        return _split_last_dim(tensor, tp)

    @staticmethod
    def backward(ctx, grad):
        return _gather_last_dim(grad, ctx.tp), None


def copy_to_parallel(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Identity forward; all-reduce of the gradient backward."""
    return _CopyToParallel.apply(tensor, tp) if tp.is_parallel else tensor


def reduce_from_parallel(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """All-reduce forward; identity backward."""
    return _ReduceFromParallel.apply(tensor, tp) if tp.is_parallel else tensor


def gather_from_parallel(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Concatenate the ranks' last-dimension slices forward; keep this rank's slice backward."""
    return _GatherFromParallel.apply(tensor, tp) if tp.is_parallel else tensor


def scatter_to_parallel(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Keep this rank's last-dimension slice forward; gather backward."""
    return _ScatterToParallel.apply(tensor, tp) if tp.is_parallel else tensor


def broadcast_from_first_rank(tensor: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Tensor-parallel rank 0's `tensor` on every rank of the group (e.g. the sampled token)."""
    if not tp.is_parallel:
        return tensor
    tensor = tensor.contiguous()
    dist.broadcast(tensor, src=dist.get_global_rank(tp.group, 0), group=tp.group)
    return tensor
