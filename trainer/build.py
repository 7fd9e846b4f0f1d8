"""Builders for every trainer piece from the resolved config.

`quad-doctor train` and the doctor's context call these same functions, so what the doctor inspects
is exactly what training will use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quad_doctor.trainer import model as model_module
from quad_doctor.trainer.config import Config
from quad_doctor.trainer.dataset import Manifest, QuadDataset
from quad_doctor.trainer.errors import ConfigError, UsageError
from quad_doctor.trainer.losses import SupConLoss
from quad_doctor.trainer.samplers import SAMPLERS, BatchSampler, StratifiedBatchSampler
from quad_doctor.trainer.schedule import LRSchedule
from quad_doctor.trainer.synthetic import embedded_default


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; asking for CUDA without one is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def dataset_path(config: Config) -> Path:
    """The dataset directory: `data.path`, or the embedded synthetic default when it is empty."""
    if config.data.path:
        return Path(config.data.path)
    return embedded_default(config.data.synthetic)


def build_dataset(config: Config) -> QuadDataset:
    """Open and validate the dataset the config points at."""
    return QuadDataset(dataset_path(config))


def build_sampler(
    config: Config, dataset: QuadDataset | Manifest, rank: int = 0, world_size: int = 1
) -> BatchSampler:
    """The training-split batch sampler named by `train.sampler`; labels come from the manifest.

    `stratified` is `quad_doctor.StratifiedBatchSampler`, the class users are given as the fix."""
    manifest = dataset.manifest if isinstance(dataset, QuadDataset) else dataset
    rows = np.flatnonzero(manifest.splits == "train")
    train = config.train
    if train.sampler == "stratified":  # the public class users get as the fix
        sampler: BatchSampler = StratifiedBatchSampler(
            manifest.labels, train.batch_size, indices=rows, seed=train.seed,
            num_replicas=world_size, rank=rank,
        )  # fmt: skip
    else:
        sampler = SAMPLERS[train.sampler](
            rows, manifest.labels[rows], train.batch_size, seed=train.seed, rank=rank,
            world_size=world_size,
        )  # fmt: skip
    if len(sampler) == 0:
        raise UsageError(
            f"train.batch_size: {config.train.batch_size} x {world_size} process(es) exceeds "
            f"the {len(rows)} training samples; no batch can be formed"
        )
    return sampler


def build_model(config: Config, dataset: QuadDataset | None = None) -> model_module.QuadModel:
    """The model, initialised from `train.seed` without touching the global RNG streams."""
    if dataset is not None:
        largest = int(dataset.arrays["text"].max(initial=0))
        if largest >= config.model.text.vocab_size:
            raise ConfigError(
                f"model.text.vocab_size: {config.model.text.vocab_size} is too small for token id "
                f"{largest} in {dataset.directory / 'text.npy'}"
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return model_module.build_model(config.model)


def build_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer over the parameters that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        # An empty optimizer cannot even be built; the doctor reports frozen models before this.
        raise ConfigError("model: every parameter is frozen, so there is nothing to optimise")
    train = config.train
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=train.learning_rate, momentum=0.9, weight_decay=train.weight_decay
        )
    return torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)


def autocast(config: Config, device: torch.device) -> torch.autocast:
    """Mixed precision for forward and loss: bfloat16 on CUDA when `train.amp`, off on CPU.

    bfloat16 keeps float32's exponent range, so no gradient scaler is needed.
    """
    enabled = config.train.amp and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def build_schedule(config: Config, steps_per_epoch: int) -> LRSchedule:
    """The per-step learning-rate schedule."""
    return LRSchedule(config.train, steps_per_epoch)


def build_loss(config: Config) -> SupConLoss:
    """The supervised contrastive loss at `train.temperature`."""
    return SupConLoss(temperature=config.train.temperature)
