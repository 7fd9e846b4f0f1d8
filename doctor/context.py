"""What checks read: the trainer's pieces, built lazily and once from the resolved config.

The builders are the trainer's own (`quad_doctor.trainer.build`), so the doctor inspects exactly
what `quad-doctor train` would use.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from quad_doctor.trainer.build import build_sampler, dataset_path
from quad_doctor.trainer.config import Config
from quad_doctor.trainer.dataset import Manifest, QuadDataset, read_manifest
from quad_doctor.trainer.samplers import BatchSampler


class DiagnosisContext:
    """Lazily built trainer pieces for one config, shared by every check of a diagnosis."""

    def __init__(self, config: Config) -> None:
        self.config = config

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
