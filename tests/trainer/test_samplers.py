from __future__ import annotations

import numpy as np
import pytest

from quad_doctor.trainer.samplers import SAMPLERS, StratifiedSampler

# Class-grouped labels, as datasets (and the synthetic generator) store them.
LABELS = np.repeat(np.arange(6), 200)
ROWS = np.arange(len(LABELS)) + 1000  # dataset rows need not start at 0


def classes_per_batch(batches):
    return [len(np.unique(LABELS[b - 1000])) for b in batches]


def test_stratified_batches_hold_every_class_at_least_twice():
    batches = StratifiedSampler(ROWS, LABELS, 32, seed=0).epoch_batches()
    assert len(batches) == 1200 // 32
    for batch in batches:
        counts = np.bincount(LABELS[batch - 1000], minlength=6)
        assert counts.min() >= 2 and counts.sum() == 32
        assert len(np.unique(batch)) == 32


def test_stratified_follows_class_shares_when_imbalanced():
    labels = np.repeat(np.arange(6), [500, 100, 100, 100, 100, 100])
    sampler = StratifiedSampler(np.arange(1000), labels, 50, seed=1)
    counts = np.bincount(labels[np.concatenate(sampler.epoch_batches())], minlength=6)
    assert counts[0] == pytest.approx(500, abs=6)
    assert all(np.bincount(labels[b], minlength=6).min() >= 2 for b in sampler.epoch_batches())


def test_stratified_keeps_rare_classes_in_every_batch_by_cycling():
    labels = np.r_[np.zeros(950, int), np.ones(50, int), np.full(3, 2)]
    batches = StratifiedSampler(np.arange(len(labels)), labels, 32).epoch_batches()
    assert all(np.bincount(labels[b], minlength=3).min() >= 2 for b in batches)


def test_sequential_gives_single_class_batches_on_grouped_data():
    batches = SAMPLERS["sequential"](ROWS, LABELS, 32).epoch_batches()
    single = np.mean([n == 1 for n in classes_per_batch(batches)])
    assert single > 0.8  # only batches straddling a class boundary hold two classes
    assert np.array_equal(np.concatenate(batches), ROWS[: len(batches) * 32])


def test_random_mixes_classes():
    batches = SAMPLERS["random"](ROWS, LABELS, 32).epoch_batches()
    assert np.mean(classes_per_batch(batches)) > 5


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_deterministic_per_seed_and_epoch(name):
    def batches(seed, epoch):
        sampler = SAMPLERS[name](ROWS, LABELS, 32, seed=seed)
        sampler.set_epoch(epoch)
        return np.concatenate(sampler.epoch_batches())

    assert np.array_equal(batches(0, 3), batches(0, 3))
    if name != "sequential":
        assert not np.array_equal(batches(0, 3), batches(0, 4))
        assert not np.array_equal(batches(0, 3), batches(1, 3))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_ranks_get_disjoint_shards_of_equal_length(name):
    shards = [SAMPLERS[name](ROWS, LABELS, 32, rank=r, world_size=2) for r in range(2)]
    first, second = (np.concatenate(s.epoch_batches()) for s in shards)
    assert len(shards[0].epoch_batches()) == len(shards[1].epoch_batches()) == len(shards[0])
    assert not set(first) & set(second)


def test_len_matches_batches_and_drops_the_partial_batch():
    sampler = SAMPLERS["random"](np.arange(100), np.arange(100) % 6, 32)
    assert len(sampler) == len(sampler.epoch_batches()) == 3
