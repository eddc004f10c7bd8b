"""Which device each rank takes."""

from __future__ import annotations

import pytest
import torch

from cogvlm.errors import ConfigError
from cogvlm.launch.distributed import LaunchEnvironment, default_device


def test_without_cuda_every_rank_uses_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert default_device(LaunchEnvironment(rank=1, world_size=2, local_rank=1)) == torch.device("cpu")


def test_a_rank_beyond_the_visible_gpus_is_refused_with_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    second = LaunchEnvironment(rank=1, world_size=2, local_rank=1)
    assert default_device(second, gpu_count=2) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"local rank 1 has no GPU: this machine shows 1 .*--nproc 1"):
        default_device(second, gpu_count=1)
