"""The learning-rate schedule: linear warmup, then cosine or linear decay to a floor."""

from __future__ import annotations

import math
import pickle

import pytest

from cogvlm.train.schedule import LearningRateSchedule


def test_warmup_rises_linearly_to_the_peak():
    schedule = LearningRateSchedule(total_iters=100, warmup_iters=4)
    assert [schedule(step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_decay_falls_monotonically_to_the_floor():
    schedule = LearningRateSchedule(total_iters=50, warmup_iters=10, min_ratio=0.1)
    values = [schedule(step) for step in range(9, 60)]
    assert all(later <= earlier for earlier, later in zip(values, values[1:], strict=False))
    assert schedule(30) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule(50) == pytest.approx(0.1) and schedule(500) == pytest.approx(0.1)


def test_linear_and_constant_styles():
    linear = LearningRateSchedule(total_iters=10, decay_style="linear", min_ratio=0.0)
    assert [linear(step) for step in (0, 5, 10)] == [1.0, 0.5, 0.0]
    assert LearningRateSchedule(total_iters=10, decay_style="constant")(7) == 1.0


def test_the_schedule_pickles_for_checkpoints():
    schedule = LearningRateSchedule(total_iters=10, warmup_iters=2)
    assert pickle.loads(pickle.dumps(schedule)) == schedule
