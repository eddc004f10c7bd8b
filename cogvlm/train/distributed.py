"""Starting torch.distributed for DeepSpeed, under torchrun, the deepspeed launcher, or alone."""

from __future__ import annotations

import logging
import os
import socket

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def resolve_device(requested: str | None) -> torch.device:
    """The requested device, else this process's GPU when there is one, else the CPU."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def choose_backend(device: torch.device, requested: str | None) -> str:
    """The torch.distributed backend: `requested` (SAT's --distributed-backend) where the device allows
    it, else nccl on CUDA and gloo on CPU (nccl on a CPU run is replaced, with a warning)."""
    default = "nccl" if device.type == "cuda" else "gloo"
    if requested is None or requested == default:
        return default
    if requested == "nccl":
        logger.warning("--distributed-backend nccl needs CUDA devices; this run is on %s: using gloo", device)
        return "gloo"
    return requested


def init_distributed(device: torch.device, backend: str | None = None) -> None:
    """Initialise the default process group (`choose_backend`) through DeepSpeed.

    A process started without a launcher becomes a world of one: DeepSpeed insists on the launcher's
    environment variables, so they are filled in for it.
    """
    import deepspeed

    if dist.is_initialized():
        return
    if "WORLD_SIZE" not in os.environ:
        defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
        defaults["MASTER_PORT"] = str(_free_port())
        for name in _LAUNCHER_VARIABLES:
            os.environ.setdefault(name, defaults[name])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        _skip_cpu_shared_memory_allreduce()
    deepspeed.init_distributed(dist_backend=choose_backend(device, backend))


def _skip_cpu_shared_memory_allreduce() -> None:
    # On CPU DeepSpeed JIT-compiles an optional shared-memory all-reduce kernel (about a minute on two
    # cores, and a C++ toolchain) before it will start; gloo does the same reduction, so mark the op as
    # unavailable in DeepSpeed's own compatibility table.
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def is_rank_zero() -> bool:
    """True on global rank 0 (or without torch.distributed)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without torch.distributed)."""
    if dist.is_initialized():
        dist.barrier()
