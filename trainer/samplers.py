"""Batch samplers: which dataset rows go into each batch, deterministic from the seed and the epoch.

SupCon learns only from anchors that have a positive in their batch, so the class mix of each batch
is the whole game. `stratified` guarantees it, `random` leaves it to chance, `sequential` walks the
file order — on class-grouped data that gives single-class batches, the original bug, on purpose.

Every sampler shards for distributed training the same way: the epoch's batches are dealt
round-robin to ranks (batch j to rank j % world_size), trimmed so every rank gets the same number.
"""

from __future__ import annotations

import numpy as np

# Two members of a class in a batch make one positive pair each: the least SupCon can learn from.
MIN_PER_CLASS = 2


class BatchSampler:
    """Base class: one int64 array of dataset rows per batch; the last partial batch is dropped."""

    name = "base"

    def __init__(
        self,
        rows: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.rows) != len(self.labels):
            raise ValueError("rows and labels must have the same length")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches the sampler yields next."""
        self.epoch = epoch

    def epoch_batches(self) -> list[np.ndarray]:
        """This rank's batches for the current epoch."""
        batches = self._global_batches(np.random.default_rng([self.seed, self.epoch]))
        per_rank = len(batches) // self.world_size
        return batches[self.rank : per_rank * self.world_size : self.world_size]

    def __iter__(self):
        return iter(self.epoch_batches())

    def __len__(self) -> int:
        return (len(self.rows) // self.batch_size) // self.world_size

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        raise NotImplementedError

    def _chunk(self, order: np.ndarray) -> list[np.ndarray]:
        count = len(order) // self.batch_size
        return list(order[: count * self.batch_size].reshape(count, self.batch_size))


class SequentialSampler(BatchSampler):
    """File order, no shuffling: on class-grouped data nearly every batch holds one class."""

    name = "sequential"

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return self._chunk(self.rows)


class RandomSampler(BatchSampler):
    """A fresh random permutation every epoch; the class mix of a batch is left to chance."""

    name = "random"

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return self._chunk(rng.permutation(self.rows))


class StratifiedSampler(BatchSampler):
    """Every batch holds every class in proportion, at least two of each when the batch size allows.

    Per-batch quotas follow the class shares, rounded so that over the epoch each class gets its
    share; a class too small for its quota is cycled through (reshuffled each pass).
    """

    name = "stratified"

    def quotas(self, num_batches: int) -> np.ndarray:
        """How many rows of each class go into each batch: an int array (num_batches, classes)."""
        classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        counts = np.bincount(self.labels, minlength=classes).astype(np.float64)
        present = counts > 0
        share = counts / counts.sum()
        size = self.batch_size
        floor = np.floor(share * size)
        if size >= MIN_PER_CLASS * present.sum():
            floor = np.where(present, np.maximum(floor, MIN_PER_CLASS), 0)
        elif size >= present.sum():
            floor = np.where(present, np.maximum(floor, 1), 0)
        # Minimums can overshoot the batch: take the excess from the largest classes.
        while floor.sum() > size:
            floor[np.argmax(floor)] -= 1
        quotas = np.tile(floor, (num_batches, 1))
        assigned = np.zeros(classes)
        for b in range(num_batches):
            assigned += floor
            # Hand the leftover slots to the classes furthest behind their running share.
            deficit = share * size * (b + 1) - assigned
            for c in np.argsort(-deficit, kind="stable")[: int(size - floor.sum())]:
                quotas[b, c] += 1
                assigned[c] += 1
        return quotas.astype(np.int64)

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        num_batches = len(self.rows) // self.batch_size
        if num_batches == 0:
            return []
        quotas = self.quotas(num_batches)
        streams = []
        for c in range(quotas.shape[1]):
            members = self.rows[self.labels == c]
            need = int(quotas[:, c].sum())
            if need == 0:
                streams.append(np.empty(0, dtype=np.int64))
                continue
            passes = -(-need // len(members))
            streams.append(np.concatenate([rng.permutation(members) for _ in range(passes)])[:need])
        offsets = np.vstack([np.zeros(quotas.shape[1], dtype=np.int64), np.cumsum(quotas, axis=0)])
        batches = []
        for b in range(num_batches):
            parts = [streams[c][offsets[b, c] : offsets[b + 1, c]] for c in range(quotas.shape[1])]
            batches.append(rng.permutation(np.concatenate(parts)))
        return batches


SAMPLERS: dict[str, type[BatchSampler]] = {
    cls.name: cls for cls in (StratifiedSampler, RandomSampler, SequentialSampler)
}
