"""Learning-rate schedule: linear warmup, then cosine (or linear) decay towards a floor."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LearningRateSchedule:
    """The factor on the peak learning rate at optimizer step `step` (0-based); picklable for checkpoints.

    Warmup reaches the peak at step `warmup_iters - 1`; decay ends at `min_ratio` after `total_iters`.
    """

    total_iters: int
    warmup_iters: int = 0
    decay_style: str = "cosine"
    min_ratio: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup_iters:
            return (step + 1) / self.warmup_iters
        if self.decay_style == "constant":
            return 1.0
        decay_iters = max(1, self.total_iters - self.warmup_iters)
        progress = min(1.0, (step - self.warmup_iters) / decay_iters)
        if self.decay_style == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * shape
