from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from quad_doctor import StratifiedBatchSampler
from quad_doctor.trainer import samplers
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


# Digests of one epoch's batches from the trainer's samplers as they were before
# StratifiedBatchSampler (commit 566f9fd): the calibrated tests and benchmarks depend on them.
def digest(sampler, epoch):
    sampler.set_epoch(epoch)
    batches = np.concatenate(sampler.epoch_batches()).astype("<i8")
    return hashlib.sha256(batches.tobytes()).hexdigest()[:16]


IMBALANCED = np.repeat(np.arange(6), [500, 100, 100, 100, 100, 100])
RARE = np.r_[np.zeros(950, int), np.ones(50, int), np.full(3, 2)]


@pytest.mark.parametrize(
    ("make", "epoch", "expected"),
    [
        (lambda: StratifiedSampler(ROWS, LABELS, 32), 1, "458ca6a14a31e75f"),
        (lambda: StratifiedSampler(ROWS, LABELS, 32, 7, 1, 3), 4, "382357a7da0d8314"),
        (lambda: StratifiedSampler(np.arange(1000), IMBALANCED, 50, 1), 2, "6d2e96999e5bc581"),
        (lambda: StratifiedSampler(np.arange(1003), RARE, 32), 1, "152df94aefa0c9a4"),
        # below two per class the trainer keeps its proportional mix (the doctor expects it)
        (lambda: StratifiedSampler(ROWS, LABELS, 13, seed=3), 1, "e8198e8273342daa"),
        (lambda: StratifiedSampler(ROWS, LABELS, 8), 1, "b0404dfd5a0029e7"),
        (lambda: SAMPLERS["random"](ROWS, LABELS, 32), 1, "4d7b1e844a2d838e"),
    ],
    ids=["grouped", "rank-1-of-3", "imbalanced", "rare", "batch-13", "batch-8", "random"],
)
def test_trainer_samplers_yield_the_same_batches_as_before(make, epoch, expected):
    assert digest(make(), epoch) == expected


def sparse_labels():
    """One label per dataset index of a 2200-row dataset whose training rows are ROWS; the
    labels are LABELS renumbered to sparse values and the other rows hold a class of their own."""
    labels = np.full(2200, 999)
    labels[ROWS] = LABELS * 7 + 3
    return labels


def test_public_sampler_matches_the_trainers_when_every_class_fits_twice():
    public = StratifiedBatchSampler(
        sparse_labels(), 32, indices=ROWS, seed=7, num_replicas=3, rank=1
    )
    assert digest(public, 4) == "382357a7da0d8314"
    imbalanced = StratifiedBatchSampler(torch.from_numpy(IMBALANCED), 50, seed=1)
    assert digest(imbalanced, 2) == "6d2e96999e5bc581"


def anchors_without_positive(labels, batches):
    """The share of batch members whose label no other member of their batch has."""
    alone = []
    for batch in batches:
        _, inverse, counts = np.unique(labels[batch], return_inverse=True, return_counts=True)
        alone.append(counts[inverse] == 1)
    return np.mean(np.concatenate(alone))


def test_ten_classes_at_batch_16_pair_up_where_the_trainer_leaves_anchors_alone():
    labels = np.repeat(np.arange(10), 100)
    trainer = StratifiedSampler(np.arange(1000), labels, 16).epoch_batches()
    assert anchors_without_positive(labels, trainer) == 0.25
    batches = StratifiedBatchSampler(labels, 16).epoch_batches()
    assert len(batches) == 1000 // 16
    assert anchors_without_positive(labels, batches) == 0
    assert all(np.array_equal(np.bincount(labels[b])[labels[b]], [2] * 16) for b in batches)
    # 62 batches of 16 are 992 different samples: none repeats while others wait
    assert len(np.unique(np.concatenate(batches))) == 992


def test_300_classes_of_5_at_batch_32_give_every_anchor_a_positive():
    labels = np.repeat(np.arange(300), 5)
    batches = StratifiedBatchSampler(labels, 32, seed=3).epoch_batches()
    assert len(batches) == 1500 // 32
    assert anchors_without_positive(labels, batches) == 0
    assert all(len(np.unique(b)) == 32 and len(np.unique(labels[b])) == 16 for b in batches)
    seen = np.concatenate(batches)
    assert len(np.unique(labels[seen])) == 300  # every class takes its turn


@pytest.mark.parametrize("batch_size", [16, 17])
def test_pairs_cover_every_sample_when_the_epoch_has_room(batch_size):
    labels = np.repeat(np.arange(100), 8)[np.random.default_rng(0).permutation(800)]
    sampler = StratifiedBatchSampler(labels, batch_size, seed=1)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        batches = sampler.epoch_batches()
        assert anchors_without_positive(labels, batches) == 0
        assert all(len(np.unique(labels[b])) == 8 for b in batches)  # 8 pairs (+1 extra)
        if batch_size == 16:  # 50 batches of 16 hold all 800 samples
            assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(800))


def test_single_sample_classes_only_fill_slots_nothing_else_can():
    labels = np.r_[np.repeat(np.arange(20), 6), 100 + np.arange(10)]  # 10 classes of one
    batches = StratifiedBatchSampler(labels, 16).epoch_batches()
    assert anchors_without_positive(labels, batches) == 0
    assert not np.isin(np.concatenate(batches), np.arange(120, 130)).any()
    # batch 3 over pairs of two: the third slot can only go to an anchor without a positive
    pairs = np.repeat(np.arange(20), 2)
    odd = StratifiedBatchSampler(pairs, 3).epoch_batches()
    assert anchors_without_positive(pairs, odd) == pytest.approx(1 / 3)


def test_sparse_labels_pair_like_their_dense_numbering():
    dense = np.repeat(np.arange(40), 4)
    sparse = np.array([3, 17, 42, 1000])[dense % 4] + 5000 * (dense // 4)
    for labels in (dense, sparse):
        sampler = StratifiedBatchSampler(labels, 16, seed=2)
        assert anchors_without_positive(labels, sampler.epoch_batches()) == 0
    same = (StratifiedBatchSampler(x, 16, seed=2).epoch_batches() for x in (dense, sparse))
    assert all(np.array_equal(a, b) for a, b in zip(*same, strict=True))


def test_a_dataloader_takes_it_as_its_batch_sampler():
    labels = torch.arange(120) % 6
    dataset = TensorDataset(torch.arange(120.0).unsqueeze(1), labels)
    train = torch.arange(20, 120)
    sampler = StratifiedBatchSampler(labels, 16, indices=train, seed=5)
    loader = DataLoader(dataset, batch_sampler=sampler)
    assert len(loader) == len(sampler) == 100 // 16
    for features, batch_labels in loader:
        assert features.shape == (16, 1) and features.min() >= 20  # only the training rows
        assert torch.bincount(batch_labels, minlength=6).min() >= 2
    assert all(type(i) is int for batch in sampler for i in batch)


@pytest.mark.parametrize("batch_size", [32, 8], ids=["every-class", "pairs"])
def test_public_batches_depend_only_on_seed_and_epoch(batch_size):
    def batches(seed, epoch):
        sampler = StratifiedBatchSampler(LABELS, batch_size, seed=seed)
        sampler.set_epoch(epoch)
        return np.concatenate(list(sampler))

    assert np.array_equal(batches(0, 3), batches(0, 3))
    assert not np.array_equal(batches(0, 3), batches(0, 4))
    assert not np.array_equal(batches(0, 3), batches(1, 3))


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("batch_size", [32, 8], ids=["every-class", "pairs"])
def test_replicas_get_disjoint_equal_shards_of_one_epoch(replicas, batch_size):
    whole = StratifiedBatchSampler(LABELS, batch_size, num_replicas=1, rank=0).epoch_batches()
    shards = [
        StratifiedBatchSampler(LABELS, batch_size, num_replicas=replicas, rank=r).epoch_batches()
        for r in range(replicas)
    ]
    per_rank = len(whole) // replicas
    assert [len(s) for s in shards] == [per_rank] * replicas
    dealt = [shards[j % replicas][j // replicas] for j in range(per_rank * replicas)]
    assert all(np.array_equal(a, b) for a, b in zip(dealt, whole, strict=False))
    assert len({tuple(b) for s in shards for b in s}) == per_rank * replicas


def test_replicas_default_to_the_torch_distributed_world(monkeypatch):
    monkeypatch.setattr(samplers.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(samplers.dist, "get_world_size", lambda group=None: 4)
    monkeypatch.setattr(samplers.dist, "get_rank", lambda group=None: 3)
    sampler = StratifiedBatchSampler(LABELS, 32)
    assert (sampler.num_replicas, sampler.rank, len(sampler)) == (4, 3, 37 // 4)
    assert StratifiedBatchSampler(LABELS, 32, num_replicas=1, rank=0).num_replicas == 1


def test_public_sampler_exposes_what_it_was_given():
    sampler = StratifiedBatchSampler([3, 17, 17, 42, 3, 42], 2, indices=[5, 0, 3], seed=9)
    assert np.array_equal(sampler.indices, [5, 0, 3])
    assert np.array_equal(sampler.labels, [3, 17, 17, 42, 3, 42])
    assert (sampler.batch_size, sampler.seed, sampler.epoch) == (2, 9, 0)
    assert (sampler.num_replicas, sampler.rank) == (1, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
        (
            {"num_replicas": 2, "rank": 2},
            r"rank 2 is out of range for 2 replica\(s\): expected 0 to 1",
        ),
        ({"num_replicas": 2, "rank": -1}, "rank -1 is out of range"),
        ({"num_replicas": 0, "rank": 0}, "num_replicas must be at least 1, got 0"),
        (
            {"labels": [[0, 1], [1, 0]]},
            r"labels must be a 1-D sequence of integers, got shape \(2, 2\)",
        ),
        ({"labels": [0.0, 1.0, 1.0]}, "labels must be integers, got float64 values"),
        ({"indices": [0, 3]}, r"indices must lie in 0\.\.2, .*; got 3"),
        ({"indices": [-1]}, "got -1"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, message):
    arguments = {"labels": [0, 1, 1], "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        StratifiedBatchSampler(arguments.pop("labels"), arguments.pop("batch_size"), **arguments)
