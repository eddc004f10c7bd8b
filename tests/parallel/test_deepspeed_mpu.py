"""Tensor x data parallel groups and the DeepSpeed mpu adapter, checked in 4 real gloo processes."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cogvlm.checkpoints.loading import load_model
from cogvlm.parallel.deepspeed_mpu import (
    DeepSpeedMpu,
    build_parallel_layout,
    deepspeed_mpu,
    mark_tensor_parallel_parameters,
)
from cogvlm.parallel.groups import NO_PARALLEL
from tests.golden import golden_dir

WORLD = 4


def _worker(rank: int, store_path: str, results) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    try:
        layout = build_parallel_layout(2)
        mpu = deepspeed_mpu(layout)
        tp_sum = torch.tensor([float(rank)])
        dist.all_reduce(tp_sum, group=mpu.get_model_parallel_group())
        dp_sum = torch.tensor([float(rank)])
        dist.all_reduce(dp_sum, group=mpu.get_data_parallel_group())
        results[rank] = (
            mpu.get_model_parallel_rank(),
            mpu.get_model_parallel_world_size(),
            mpu.get_data_parallel_rank(),
            mpu.get_data_parallel_world_size(),
            float(tp_sum),
            float(dp_sum),
        )
    finally:
        dist.destroy_process_group()


def test_tensor_parallel_groups_are_consecutive_ranks_and_data_parallel_groups_stride_across(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "store"), results), nprocs=WORLD, join=True)
    # ranks 0,1 and 2,3 share a TP group; ranks 0,2 and 1,3 a data-parallel group
    assert dict(results) == {
        0: (0, 2, 0, 2, 1.0, 2.0),
        1: (1, 2, 0, 2, 1.0, 4.0),
        2: (0, 2, 1, 2, 5.0, 2.0),
        3: (1, 2, 1, 2, 5.0, 4.0),
    }


def test_without_tensor_parallelism_deepspeed_gets_no_mpu_and_no_parameter_is_flagged():
    model, _ = load_model(golden_dir() / "cogvlm" / "sat_checkpoint")
    assert mark_tensor_parallel_parameters(model, NO_PARALLEL) == 0
    assert all(p.tensor_model_parallel is False for p in model.parameters())
    assert isinstance(DeepSpeedMpu, type)
