"""Batch samplers: which dataset rows go into each batch, deterministic from the seed and the epoch.

SupCon learns only from anchors that have a positive in their batch, so the class mix of each batch
is the whole game. `stratified` guarantees it, `random` leaves it to chance, `sequential` walks the
file order — on class-grouped data that gives single-class batches, the original bug, on purpose.
`StratifiedBatchSampler` is the public form of `stratified` for a user's own DataLoader
(`quad_doctor.StratifiedBatchSampler`); it also pairs classes when they outnumber half the batch.

Every sampler is a torch batch sampler (it yields lists of dataset indices) and shards for
distributed training the same way: the epoch's batches are dealt round-robin to ranks (batch j to
rank j % num_replicas), trimmed so every rank gets the same number.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

# Two members of a class in a batch make one positive pair each: the least SupCon can learn from.
MIN_PER_CLASS = 2


class BatchSampler(Sampler[list[int]]):
    """Base class: batches of dataset indices, the last partial batch dropped.

    Built as the trainer builds it: the dataset `rows` to sample and their `labels`, side by side.
    `epoch_batches()` gives this rank's batches as int64 arrays, iteration as lists of ints.
    """

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
        self.indices = np.asarray(rows, dtype=np.int64)
        self.index_labels = np.asarray(labels, dtype=np.int64)
        if len(self.indices) != len(self.index_labels):
            raise ValueError("rows and labels must have the same length")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
            raise ValueError(f"batch_size must be an integer, got {batch_size!r}")
        if batch_size < MIN_PER_CLASS:
            raise ValueError(f"batch_size must be at least 2 (one positive pair), got {batch_size}")
        if world_size < 1:
            raise ValueError(f"num_replicas must be at least 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(
                f"rank {rank} is out of range for {world_size} replica(s): "
                f"expected 0 to {world_size - 1}"
            )
        self.batch_size = int(batch_size)
        self.seed = seed
        self.rank = rank
        self.num_replicas = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches the sampler yields next."""
        self.epoch = epoch

    def epoch_batches(self) -> list[np.ndarray]:
        """This rank's batches for the current epoch: an int64 array of dataset indices each."""
        batches = self._global_batches(np.random.default_rng([self.seed, self.epoch]))
        per_rank = len(batches) // self.num_replicas
        return batches[self.rank : per_rank * self.num_replicas : self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return (batch.tolist() for batch in self.epoch_batches())

    def __len__(self) -> int:
        return (len(self.indices) // self.batch_size) // self.num_replicas

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        raise NotImplementedError

    def _chunk(self, order: np.ndarray) -> list[np.ndarray]:
        count = len(order) // self.batch_size
        return list(order[: count * self.batch_size].reshape(count, self.batch_size))


class SequentialSampler(BatchSampler):
    """File order, no shuffling: on class-grouped data nearly every batch holds one class."""

    name = "sequential"

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return self._chunk(self.indices)


class RandomSampler(BatchSampler):
    """A fresh random permutation every epoch; the class mix of a batch is left to chance."""

    name = "random"

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        return self._chunk(rng.permutation(self.indices))


class StratifiedSampler(BatchSampler):
    """Every batch holds every class in proportion, at least two of each when the batch size allows.

    Per-batch quotas follow the class shares, rounded so that over the epoch each class gets its
    share; a class too small for its quota is cycled through (reshuffled each pass). Classes are the
    distinct label values in sorted order, whatever the values are.

    Below two slots per class some classes get one slot or none, and their anchors no positive: the
    trainer keeps it so, as the doctor's checks expect (sampler-class-mix asks for a larger batch);
    `StratifiedBatchSampler` pairs classes instead.
    """

    name = "stratified"

    def __init__(
        self,
        rows: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(rows, labels, batch_size, seed=seed, rank=rank, world_size=world_size)
        # Each index's class as a number 0..C-1 (`codes`), the distinct labels in order (`classes`).
        self.classes, self.codes = np.unique(self.index_labels, return_inverse=True)
        self.class_sizes = np.bincount(self.codes, minlength=len(self.classes))

    def quotas(self, num_batches: int) -> np.ndarray:
        """How many rows of each class go into each batch: an int array (num_batches, classes)."""
        share = self.class_sizes / self.class_sizes.sum()
        size = self.batch_size
        floor = np.floor(share * size)
        if size >= MIN_PER_CLASS * len(share):
            floor = np.maximum(floor, MIN_PER_CLASS)
        elif size >= len(share):
            floor = np.maximum(floor, 1)
        # Minimums can overshoot the batch: take the excess from the largest classes.
        while floor.sum() > size:
            floor[np.argmax(floor)] -= 1
        quotas = np.tile(floor, (num_batches, 1))
        assigned = np.zeros(len(share))
        for b in range(num_batches):
            assigned += floor
            # Hand the leftover slots to the classes furthest behind their running share.
            deficit = share * size * (b + 1) - assigned
            for c in np.argsort(-deficit, kind="stable")[: int(size - floor.sum())]:
                quotas[b, c] += 1
                assigned[c] += 1
        return quotas.astype(np.int64)

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        num_batches = len(self.indices) // self.batch_size
        if num_batches == 0:
            return []
        quotas = self.quotas(num_batches)
        streams = []
        for members, need in zip(self._members(), quotas.sum(axis=0), strict=True):
            if need == 0:
                streams.append(np.empty(0, dtype=np.int64))
                continue
            passes = -(-need // len(members))
            streams.append(np.concatenate([rng.permutation(members) for _ in range(passes)])[:need])
        classes = np.tile(np.arange(len(self.classes)), num_batches)
        slots = np.repeat(classes, quotas.ravel()).reshape(num_batches, self.batch_size)
        return _deal(slots, streams, rng)

    def _members(self) -> list[np.ndarray]:
        """Each class's dataset indices, in the order given."""
        grouped = self.indices[np.argsort(self.codes, kind="stable")]
        return np.split(grouped, np.cumsum(self.class_sizes)[:-1])


class StratifiedBatchSampler(StratifiedSampler):
    """A batch sampler for supervised-contrastive training: every anchor gets a positive.

    Give it to a DataLoader as `batch_sampler` and call `set_epoch` before each epoch, as with
    torch's `DistributedSampler`:

        from torch.utils.data import DataLoader
        from quad_doctor import StratifiedBatchSampler

        sampler = StratifiedBatchSampler(labels, batch_size=64, indices=train_indices, seed=0)
        loader = DataLoader(dataset, batch_sampler=sampler)
        for epoch in range(num_epochs):
            sampler.set_epoch(epoch)
            for batch in loader:
                ...

    `labels` holds one integer class label per dataset index (a list, NumPy array or tensor; any
    values, e.g. 0..999 or [3, 17, 17, 42]); `indices` the dataset indices to sample, e.g. the
    training split (default: all). An epoch has len(indices) // batch_size batches, the remainder
    dropped; they depend only on (seed, epoch). With C classes among `indices`:

    - batch_size >= 2 * C: every batch holds every class, two or more of each, in proportion to the
      class shares; a class too small for its quota is cycled, reshuffled each pass (a class of one
      sample then appears twice). The same batches as the embedded trainer's `stratified` sampler.
    - batch_size < 2 * C: P = batch_size // 2 classes, two samples each; an odd batch gives one of
      its classes a third (so at batch_size 2 or 3 a batch is one class: no negatives). Classes
      take turns and each class's samples are walked in reshuffled passes, so every sample
      appears at least once an epoch when the epoch has room for all of them, rounded up to pairs
      (a class has at most one pair a batch: one holding over 2 / batch_size of the samples is
      only partly seen).

      A class with a single sample cannot give its anchor a positive: its sample only fills a slot
      nothing else can (fewer than P classes have two samples, or no class of an odd batch has a
      third), and then that anchor has no positive.

    `num_replicas` and `rank` default to the torch.distributed world when it is initialised, else
    1 and 0. Each replica gets every num_replicas-th batch of the epoch (batch j to rank
    j % num_replicas), all the same number, none shared. `len(sampler)` is this replica's batches
    per epoch; `epoch_batches()` returns them as int64 arrays. Attributes: `indices`, `labels`,
    `batch_size`, `seed`, `epoch`, `num_replicas`, `rank`.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        batch_size: int,
        *,
        indices: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.labels = _integer_vector("labels", labels)
        rows = (
            np.arange(len(self.labels)) if indices is None else _integer_vector("indices", indices)
        )
        outside = rows[(rows < 0) | (rows >= len(self.labels))]
        if len(outside):
            raise ValueError(
                f"indices must lie in 0..{len(self.labels) - 1}, one per dataset index that has a "
                f"label; got {outside[0]}"
            )
        initialised = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialised else 1
        if rank is None:
            rank = dist.get_rank() if initialised else 0
        super().__init__(
            rows, self.labels[rows], batch_size, seed=seed, rank=rank, world_size=num_replicas
        )

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        if self.batch_size >= MIN_PER_CLASS * len(self.classes):
            return super()._global_batches(rng)
        num_batches = len(self.indices) // self.batch_size
        if num_batches == 0:
            return []
        slots = self._pair_slots(num_batches, rng)
        streams = [
            _walk(members, takes, rng)
            for members, takes in zip(
                self._members(), _takes(slots, len(self.classes)), strict=True
            )
        ]
        return _deal(slots, streams, rng)

    def _pair_slots(self, num_batches: int, rng: np.random.Generator) -> np.ndarray:
        """The class of every slot of every batch, (num_batches, batch_size), each row in class
        order, when classes outnumber half the batch: P classes with two slots each."""
        sizes = self.class_sizes
        paired = np.flatnonzero(sizes >= MIN_PER_CLASS)
        per_batch = min(self.batch_size // MIN_PER_CLASS, len(paired))
        caps = np.full(len(paired), num_batches)  # one pair per batch per class
        total = num_batches * per_batch
        # Pairs over the epoch: enough for every sample to appear once where they fit, the rest in
        # proportion to the class sizes (small classes cycled).
        cover = np.minimum(-(-sizes[paired] // MIN_PER_CLASS), caps)
        if cover.sum() <= total:
            pairs = cover + _apportion(total - int(cover.sum()), sizes[paired], caps - cover)
        else:
            pairs = _apportion(total, sizes[paired], caps)
        # Classes for the slots no pair fills, smallest first (ties at random), taking turns.
        fallback = itertools.cycle(np.lexsort((rng.random(len(sizes)), sizes)).tolist())
        slots = np.empty((num_batches, self.batch_size), dtype=np.int64)
        for row in slots:
            # The classes with the most pairs left, ties at random: none has more pairs left than
            # there are batches left, so every batch finds per_batch distinct classes.
            ahead = -(pairs + rng.random(len(pairs)))
            chosen = np.argpartition(ahead, per_batch - 1)[:per_batch] if per_batch else paired[:0]
            pairs[chosen] -= 1
            classes, counts = _fill(paired[chosen], sizes, self.batch_size, fallback, rng)
            row[:] = np.sort(np.repeat(classes, counts))
        return slots


def _deal(
    slots: np.ndarray, streams: list[np.ndarray], rng: np.random.Generator
) -> list[np.ndarray]:
    """The batches: each slot takes the next sample of its class's stream, batch by batch, then
    each batch is shuffled. `slots` holds the class of every slot, each row in class order."""
    samples = np.empty(slots.size, dtype=np.int64)
    samples[np.argsort(slots, axis=None, kind="stable")] = np.concatenate(streams)
    return [rng.permutation(batch) for batch in samples.reshape(slots.shape)]


def _takes(slots: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """How many samples each class gives each batch it is in, batch by batch: one array a class."""
    order = np.argsort(slots, axis=None, kind="stable")
    classes, batches = slots.ravel()[order], order // slots.shape[1]
    starts = np.flatnonzero(
        np.r_[True, (classes[1:] != classes[:-1]) | (batches[1:] != batches[:-1])]
    )
    lengths = np.diff(np.r_[starts, len(order)])
    return np.split(lengths, np.searchsorted(classes[starts], np.arange(1, num_classes)))


def _walk(members: np.ndarray, takes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`members` in reshuffled passes, as many as the batches `takes` (none above the class size);
    a batch whose take spans two passes never holds a member twice."""
    need = int(takes.sum())
    starts = np.cumsum(takes) - takes
    passes: list[np.ndarray] = []
    for boundary in range(0, need, len(members)):
        order = rng.permutation(members)
        spanning = np.searchsorted(starts, boundary, side="right") - 1
        if passes and starts[spanning] < boundary:
            # Members that batch already took from the last pass go to the end of this one.
            taken = passes[-1][starts[spanning] - boundary :]
            repeat = np.isin(order, taken)
            order = np.concatenate([order[~repeat], order[repeat]])
        passes.append(order)
    return np.concatenate(passes)[:need] if passes else np.empty(0, dtype=np.int64)


def _fill(
    classes: np.ndarray,
    sizes: np.ndarray,
    batch_size: int,
    fallback: Iterator[int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One batch's classes and their sample counts: two each of `classes`, then the slots left go
    to those with samples to spare (an odd batch's last slot) and, only when none has, one each to
    the next `fallback` classes not in the batch, whose anchors then have no positive."""
    counts = np.full(len(classes), MIN_PER_CLASS)
    while (left := batch_size - int(counts.sum())) > 0:
        spare = np.flatnonzero(counts < sizes[classes])
        if len(spare):
            counts[rng.permutation(spare)[:left]] += 1
        else:
            extra = next(c for c in fallback if c not in classes)
            classes, counts = np.append(classes, extra), np.append(counts, 1)
    return classes, counts


def _apportion(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """`total` units split in proportion to `weights`, none above its cap (a capped class's share
    goes to the others; the last units to the largest shares). The caps must hold `total`."""
    given = np.zeros(len(weights), dtype=np.int64)
    while (left := total - int(given.sum())) > 0:
        room = caps - given
        open_weights = np.where(room > 0, weights, 0)
        ideal = left * open_weights / open_weights.sum()
        step = np.minimum(np.floor(ideal).astype(np.int64), room)
        if step.sum() == 0:
            # Every share is under one unit: one each to the largest shares.
            step[np.argsort(-ideal, kind="stable")[:left]] = 1
        given += step
    return given


def _integer_vector(name: str, values: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    """`values` as a 1-D int64 array, or a ValueError that says what is wrong with them."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of integers, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got {array.dtype} values")
    return array.astype(np.int64)


SAMPLERS: dict[str, type[BatchSampler]] = {
    cls.name: cls for cls in (StratifiedSampler, RandomSampler, SequentialSampler)
}
