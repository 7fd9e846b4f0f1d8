"""Batch samplers for contrastive training."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class StratifiedBatchSampler(Sampler[list[int]]):
    """Class-balanced batch sampler for SupCon.

    Indices are stratified by label so that every class is sampled at the same rate and no
    class dominates an epoch: each epoch the members of every class are shuffled, the classes
    are visited in a random order, and the result is cut into batches of ``batch_size``. The
    last incomplete batch is dropped so every batch has the same size (SupCon's loss scale
    depends on it). Deterministic for a given ``seed`` and epoch; call ``set_epoch`` at the
    start of every epoch, as with ``DistributedSampler``.

    Args:
        labels: the class label of every dataset index.
        batch_size: indices per batch.
        seed: base seed of the shuffles.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0) -> None:
        self.labels = [int(y) for y in labels]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))

        # Stratify: bucket the indices by class.
        by_class: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(self.labels):
            by_class[label].append(index)

        # Shuffle within each class and the order the classes are taken in.
        classes = sorted(by_class)
        rng.shuffle(classes)
        order: list[int] = []
        for label in classes:
            members = np.array(by_class[label])
            rng.shuffle(members)
            order.extend(members.tolist())

        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start : start + self.batch_size]

    def __len__(self) -> int:
        return len(self.labels) // self.batch_size
