"""The data order: a pure function of (seed, micro-step), split across data-parallel ranks."""

from __future__ import annotations

import itertools

import pytest

from cogvlm.train.order import DataOrder


def test_ranks_read_disjoint_slices_that_cover_each_global_batch():
    orders = [DataOrder(40, 4, rank, 3, seed=5) for rank in range(3)]
    for step in range(6):
        batches = [order.batch(step) for order in orders]
        flat = [index for batch in batches for index in batch]
        assert len(flat) == len(set(flat)) == 12


def test_an_epoch_visits_every_sample_at_most_once_and_the_next_reshuffles():
    order = DataOrder(10, 3, seed=1)
    epoch = [index for step in range(order.batches_per_epoch) for index in order.batch(step)]
    assert len(set(epoch)) == 9  # 3 batches of 3; the tenth sample waits for a later epoch
    assert order.permutation(0).tolist() != order.permutation(1).tolist()


def test_starting_at_a_micro_step_continues_the_same_sequence():
    order = DataOrder(50, 4, seed=9)
    whole = list(itertools.islice(order.batches(), 12))
    assert list(itertools.islice(order.batches(5), 7)) == whole[5:]
    assert DataOrder(50, 4, seed=9).batch(3) == whole[3]
    assert DataOrder(50, 4, seed=10).batch(3) != whole[3]


def test_too_few_samples_for_one_global_batch_is_an_error():
    with pytest.raises(ValueError, match="7 samples cannot fill one global batch of 4 per rank x 2"):
        DataOrder(7, 4, 0, 2)
