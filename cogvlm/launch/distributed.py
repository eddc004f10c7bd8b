"""Starting torch.distributed from torchrun's environment and splitting ranks into tensor-parallel groups."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cogvlm.errors import ConfigError
from cogvlm.parallel.groups import NO_PARALLEL, TensorParallel

# Collectives of the model fail after this long instead of hanging on a dead peer.
COMPUTE_TIMEOUT_S = 600
# Control messages (user input broadcast by rank 0) may wait as long as a person takes to type.
CONTROL_TIMEOUT_S = 7 * 24 * 3600


@dataclass(frozen=True)
class LaunchEnvironment:
    """What torchrun (or the deepspeed launcher) told this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        """True when several processes take part."""
        return self.world_size > 1


def read_launch_environment(environ: dict[str, str] | None = None) -> LaunchEnvironment:
    """RANK, WORLD_SIZE and LOCAL_RANK, with single-process defaults."""
    environ = os.environ if environ is None else environ
    return LaunchEnvironment(
        rank=int(environ.get("RANK", 0)),
        world_size=int(environ.get("WORLD_SIZE", 1)),
        local_rank=int(environ.get("LOCAL_RANK", 0)),
    )


@dataclass(frozen=True)
class ParallelRuntime:
    """This process's place: its tensor-parallel slice, its device and a group for control messages."""

    tp: TensorParallel
    device: torch.device
    control_group: object = None
    data_parallel_rank: int = 0
    data_parallel_size: int = 1

    @property
    def is_first_rank(self) -> bool:
        """True on the rank that reads input and prints output."""
        return self.tp.rank == 0 and self.data_parallel_rank == 0


def default_device(environment: LaunchEnvironment, gpu_count: int | None = None) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else the CPU. One rank per GPU: a LOCAL_RANK beyond the
    visible GPUs (`--nproc 2` on a one-GPU machine) is refused, not left to fail on a missing device."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    gpu_count = torch.cuda.device_count() if gpu_count is None else gpu_count
    if environment.local_rank >= gpu_count:
        raise ConfigError(
            f"local rank {environment.local_rank} has no GPU: this machine shows {gpu_count} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); each rank needs its "
            f"own GPU, so start at most {gpu_count} processes per machine (--nproc {gpu_count})"
        )
    return torch.device("cuda", environment.local_rank)


def init_parallel_runtime(
    tp_size: int | None = None,
    *,
    backend: str | None = None,
    timeout_s: float = COMPUTE_TIMEOUT_S,
    environment: LaunchEnvironment | None = None,
) -> ParallelRuntime:
    """Join the process group torchrun set up; consecutive ranks form each tensor-parallel group.

    `tp_size` None means every rank is one tensor-parallel group. World size must be a multiple of it; the
    remaining factor is data parallelism.
    """
    environment = environment or read_launch_environment()
    device = default_device(environment)
    if not environment.is_distributed:
        return ParallelRuntime(NO_PARALLEL, device)
    tp_size = tp_size or environment.world_size
    if environment.world_size % tp_size:
        raise ValueError(
            f"WORLD_SIZE={environment.world_size} is not a multiple of the tensor parallel size {tp_size}"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend or ("nccl" if device.type == "cuda" else "gloo"), timeout=timedelta(seconds=timeout_s)
        )
    my_group = None
    for start in range(0, environment.world_size, tp_size):
        group = dist.new_group(ranks=list(range(start, start + tp_size)))
        if start <= environment.rank < start + tp_size:
            my_group = group
    control = dist.new_group(backend="gloo", timeout=timedelta(seconds=CONTROL_TIMEOUT_S))
    tp = (
        TensorParallel(group=my_group, rank=environment.rank % tp_size, size=tp_size)
        if tp_size > 1
        else NO_PARALLEL
    )
    return ParallelRuntime(
        tp, device, control, environment.rank // tp_size, environment.world_size // tp_size
    )


def broadcast_object(value, runtime: ParallelRuntime):
    """Rank 0's `value` on every rank (over the control group, which tolerates long waits)."""
    if runtime.control_group is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=runtime.control_group)
    return box[0]


def broadcast_reader(read_line, runtime: ParallelRuntime):
    """`read_line` on the first rank, its answer broadcast to every rank (end of input included)."""
    if runtime.control_group is None:
        return read_line

    def read_and_share(prompt: str) -> str:
        line = None
        if runtime.is_first_rank:
            try:
                line = read_line(prompt)
            except EOFError:
                line = None
        line = broadcast_object(line, runtime)
        if line is None:
            raise EOFError
        return line

    return read_and_share


def shutdown(runtime: ParallelRuntime) -> None:
    """Leave the process group if this process joined one."""
    if runtime.control_group is not None and dist.is_initialized():
        dist.destroy_process_group()
