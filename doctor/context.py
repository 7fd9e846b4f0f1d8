"""What checks read: the trainer's pieces, built lazily and once from the resolved config.

The builders are the trainer's own (`quad_doctor.trainer.build`), so the doctor inspects exactly
what `quad-doctor train` would use. Checks must not mutate what the context hands out: a check
that needs to train works on `model_copy()` and `optimizer_for(copy)`.
"""

from __future__ import annotations

import copy
import math
import random
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quad_doctor.trainer.build import (
    build_loss,
    build_model,
    build_optimizer,
    build_sampler,
    build_schedule,
    dataset_path,
    resolve_device,
)
from quad_doctor.trainer.config import Config
from quad_doctor.trainer.dataset import Batch, Manifest, QuadDataset, read_manifest
from quad_doctor.trainer.losses import SupConLoss, positives_per_anchor
from quad_doctor.trainer.model import QuadModel
from quad_doctor.trainer.samplers import BatchSampler
from quad_doctor.trainer.schedule import LRSchedule

# The epoch whose batches checks inspect; samplers are seeded per epoch, training starts at 1.
FIRST_EPOCH = 1


@contextmanager
def isolated_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run a block with seeded RNG streams, then restore Python's, NumPy's and torch's exactly.

    CUDA streams are forked when `device` is CUDA or CUDA is already in use.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    on_cuda = (device is not None and device.type == "cuda") or torch.cuda.is_initialized()
    cuda = list(range(torch.cuda.device_count())) if on_cuda else []
    try:
        with torch.random.fork_rng(devices=cuda):
            # not torch.manual_seed: on CPU it would also (lazily) reseed CUDA, outside the fork
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed_all(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def distributed_batches(
    per_rank: list[list[np.ndarray]], gather: bool
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The batches SupCon sees when N ranks train, and what each rank's own batches look like.

    `per_rank[r][s]` is rank r's labels at step s. With `gather`, step s's contrastive batch is
    every rank's batch together; without, each rank's batch is one. One rank: its batches and no
    evidence.
    """
    if len(per_rank) == 1:
        return per_rank[0], {}
    steps = [np.concatenate(step) for step in zip(*per_rank, strict=True)]
    batches = steps if gather else [batch for rank in per_rank for batch in rank]
    single, positive, lonely = [], [], []
    for own in per_rank:
        positives = np.concatenate([positives_per_anchor(b) for b in own])
        single.append(round(float(np.mean([len(np.unique(b)) == 1 for b in own])), 4))
        positive.append(round(float(positives.mean()), 3))
        lonely.append(round(float(np.mean(positives == 0)), 4))
    gathered = np.concatenate([positives_per_anchor(b) for b in steps])
    evidence = {
        "world_size": len(per_rank),
        "gather_features": gather,
        "ranks_with_single_class_batches": [r for r, share in enumerate(single) if share > 0],
        "per_rank": [
            f"rank {r}: {single[r]:.0%} single-class batches, {positive[r]:.1f} positives per "
            f"anchor, {lonely[r]:.0%} anchors without one"
            for r in range(len(per_rank))
        ],
        "per_rank_single_class_batch_fraction": single,
        "per_rank_positives_per_anchor_mean": positive,
        # positives per anchor with and without `dist.gather_features`
        "positives_per_anchor_mean_local": round(float(np.mean(positive)), 3),
        "positives_per_anchor_mean_gathered": round(float(gathered.mean()), 3),
    }
    return batches, evidence


def class_counts(manifest: Manifest) -> dict[str, Any]:
    """Samples of each class in each split (for the report's pictures)."""
    width = len(manifest.class_names)
    return {
        "classes": list(manifest.class_names),
        **{
            split: np.bincount(manifest.labels[manifest.splits == split], minlength=width).tolist()
            for split in ("train", "val")
        },
    }


def weight_scale(model: torch.nn.Module) -> float | None:
    """The typical size of the trainable weights: median RMS of their weight tensors.

    Weight matrices, conv kernels and embedding tables (two or more axes) only: biases start at
    zero and norm gains at one, so they say nothing about the scale. None if nothing trains.
    """
    trainable = [p.detach() for p in model.parameters() if p.requires_grad]
    weights = [p for p in trainable if p.ndim >= 2] or trainable
    if not weights:
        return None
    # vector_norm is one kernel per tensor; pow/mean/sqrt took ~1 ms per tensor on 2 CPU cores
    return statistics.median(
        float(torch.linalg.vector_norm(w.float())) / math.sqrt(w.numel()) for w in weights
    )


class DiagnosisContext:
    """Lazily built trainer pieces for one config, shared by every check of a diagnosis."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # Report-level measurements checks publish for the report (the LR range test's curve).
        self.published: dict[str, Any] = {}
        # Per-check settings a command passes down, by check name (the LR sweep's span, steps).
        self.options: dict[str, dict[str, Any]] = {}

    # -- data ------------------------------------------------------------------------------------

    @cached_property
    def dataset_dir(self) -> Path:
        """The dataset directory (the embedded default is generated here when needed)."""
        return dataset_path(self.config)

    @cached_property
    def manifest(self) -> Manifest:
        """Labels, splits and class names; what label-only checks read, never the arrays."""
        return read_manifest(self.dataset_dir)

    @cached_property
    def dataset(self) -> QuadDataset:
        """The validated dataset with its memory-mapped arrays."""
        return QuadDataset(self.dataset_dir)

    @cached_property
    def train_rows(self) -> np.ndarray:
        """Dataset rows of the training split."""
        return np.flatnonzero(self.manifest.splits == "train")

    def sampler(self, rank: int = 0, world_size: int = 1) -> BatchSampler:
        """A new sampler as the trainer builds it, so callers cannot disturb each other."""
        return build_sampler(self.config, self.manifest, rank=rank, world_size=world_size)

    @cached_property
    def steps_per_epoch(self) -> int:
        """Optimisation steps in one epoch, as the trainer's sampler yields them."""
        return len(self.sampler())

    def epoch_batches(
        self, epoch: int = FIRST_EPOCH, rank: int = 0, world_size: int = 1
    ) -> list[np.ndarray]:
        """The dataset rows of every batch the trainer's sampler yields in `epoch` (to `rank` of
        `world_size` processes)."""
        sampler = self.sampler(rank=rank, world_size=world_size)
        sampler.set_epoch(epoch)
        return sampler.epoch_batches()

    def contrast_batches(self, epoch: int = FIRST_EPOCH) -> tuple[list[np.ndarray], dict]:
        """The label arrays SupCon is computed over in `epoch`, as training will form them.

        One process: the sampler's batches. `dist.nproc_per_node` = N > 1: every rank's sampler
        is simulated here, in one process; with `dist.gather_features` SupCon sees the N ranks'
        batches of a step together, without it each rank's batch alone. Also returns the
        per-rank evidence (see `distributed_batches`).
        """
        labels = self.manifest.labels
        world_size = self.config.dist.nproc_per_node
        per_rank = [
            [labels[rows] for rows in self.epoch_batches(epoch, rank, world_size)]
            for rank in range(world_size)
        ]
        return distributed_batches(per_rank, self.config.dist.gather_features)

    @cached_property
    def mixed_batch_rows(self) -> np.ndarray:
        """One fixed training batch with every class as evenly as the data allows.

        Independent of `train.sampler`, so probes that need a batch SupCon can learn from have one
        even when the configured sampler yields single-class batches.
        """
        labels = self.manifest.labels[self.train_rows]
        rng = np.random.default_rng(self.config.train.seed)
        by_class = [rng.permutation(self.train_rows[labels == c]) for c in np.unique(labels)]
        size = min(self.config.train.batch_size, len(self.train_rows))
        rows: list[int] = []
        depth = 0
        while len(rows) < size:  # deal one sample of each class per round
            rows.extend(int(group[depth]) for group in by_class if depth < len(group))
            depth += 1
        return np.sort(np.array(rows[:size]))

    def batch(self, rows: np.ndarray) -> Batch:
        """The samples at `rows`, on the training device."""
        return self.dataset.batch(rows).to(self.device)

    # -- model and optimisation -----------------------------------------------------------------

    @cached_property
    def device(self) -> torch.device:
        """The device `train.device` resolves to."""
        return resolve_device(self.config.train.device)

    @cached_property
    def model(self) -> QuadModel:
        """The model as training would start it; read it, never change it."""
        return build_model(self.config, self.dataset).to(self.device)

    def model_copy(self) -> QuadModel:
        """An independent copy of the model for checks that run forward/backward steps."""
        return copy.deepcopy(self.model)

    @cached_property
    def weight_scale(self) -> float | None:
        """The typical size of the model's trainable weights (see `weight_scale`)."""
        return weight_scale(self.model)

    @cached_property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer training would use; None when no parameter is trainable."""
        if not any(p.requires_grad for p in self.model.parameters()):
            return None
        return build_optimizer(self.config, self.model)

    def optimizer_for(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """A fresh optimizer, built as training builds it, over another model (a copy)."""
        return build_optimizer(self.config, model)

    @cached_property
    def schedule(self) -> LRSchedule:
        """The per-step learning-rate schedule training would follow."""
        return build_schedule(self.config, self.steps_per_epoch)

    @cached_property
    def loss_fn(self) -> SupConLoss:
        """The SupCon loss at the configured temperature."""
        return build_loss(self.config)
