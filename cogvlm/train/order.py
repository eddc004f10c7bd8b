"""The order samples are read in: a pure function of (seed, micro-step), so a resumed run reads on exactly."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataOrder:
    """Per-epoch seeded permutations, cut into global batches of `batch_size` x `data_parallel_size`.

    Each data-parallel rank reads its own slice of every global batch. An epoch's incomplete last
    global batch is dropped, so every step sees the same number of samples.
    """

    num_samples: int
    batch_size: int
    data_parallel_rank: int = 0
    data_parallel_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"{self.num_samples} samples cannot fill one global batch of {self.batch_size} per rank x "
                f"{self.data_parallel_size} data-parallel ranks"
            )
        if not 0 <= self.data_parallel_rank < self.data_parallel_size:
            raise ValueError(
                f"data parallel rank {self.data_parallel_rank} outside [0, {self.data_parallel_size})"
            )

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in one pass over the data."""
        return self.num_samples // (self.batch_size * self.data_parallel_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of one epoch."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def batch(self, micro_step: int) -> list[int]:
        """This rank's sample indices for global micro-step `micro_step` (0-based)."""
        epoch, index = divmod(micro_step, self.batches_per_epoch)
        start = (index * self.data_parallel_size + self.data_parallel_rank) * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size].tolist()

    def batches(self, start_micro_step: int = 0) -> Iterator[list[int]]:
        """This rank's batches from `start_micro_step` on, forever."""
        micro_step = start_micro_step
        while True:
            yield self.batch(micro_step)
            micro_step += 1
