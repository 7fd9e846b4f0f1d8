"""The embedded quadmodal trainer as a `TrainingSetup`: one provider of what the doctor reads.

Built from the resolved config with the trainer's own builders, so the doctor inspects exactly what
`quad-doctor train` will use. Its remedies are config patches (the setup carries its config).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from quad_doctor.trainer.build import (
    build_dataset,
    build_loss,
    build_model,
    build_optimizer,
    build_sampler,
    build_schedule,
    resolve_device,
)
from quad_doctor.trainer.config import Config
from quad_doctor.trainer.dataset import QuadDataset
from quad_doctor.trainer.evaluate import EVAL_BATCH_SIZE
from quad_doctor.trainer.setup import TrainingSetup


class QuadTorchDataset(torch.utils.data.Dataset):
    """A dataset directory as a torch `Dataset` whose items and batches are dicts of tensors.

    `__getitems__` reads a whole batch with one fancy-indexed read per modality (the DataLoader
    uses it when present); `arrays`, `sample_ids` and `splits` expose the memory-mapped files, which
    lets the data-integrity check scan them in full.
    """

    def __init__(self, dataset: QuadDataset) -> None:
        self.quad = dataset
        self.arrays = dataset.arrays
        self.labels = dataset.labels
        self.sample_ids = dataset.sample_ids
        self.splits = dataset.manifest.splits
        self.class_names = dataset.class_names

    def __len__(self) -> int:
        return len(self.quad)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        batch = self.quad.batch(np.asarray(indices, dtype=np.int64))
        return {**batch.inputs(), "labels": batch.labels}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


def collate_batch(items: Any) -> Any:
    """A batch `__getitems__` already stacked passes through; single items are stacked."""
    if isinstance(items, dict):
        return items
    return torch.utils.data.default_collate(items)


class RowBatches(torch.utils.data.Sampler):
    """Fixed rows in order, in batches of `batch_size` (the last one partial): validation."""

    def __init__(self, rows: np.ndarray, batch_size: int) -> None:
        self.indices = np.asarray(rows, dtype=np.int64)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)


class SupConScalar(nn.Module):
    """The trainer's SupCon loss, returning the scalar the setup contract asks for."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.supcon = build_loss(config)
        self.temperature = self.supcon.temperature

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return self.supcon(features, labels).loss


def embedded_setup(config: Config) -> TrainingSetup:
    """The trainer's pieces for `config` as a `TrainingSetup` (model, SupCon, optimizer factory,
    the configured sampler's loader, the per-step schedule)."""
    dataset = build_dataset(config)
    torch_dataset = QuadTorchDataset(dataset)
    sampler = build_sampler(config, dataset)
    val_rows = dataset.split_indices("val")
    model = build_model(config, dataset)
    schedule = build_schedule(config, len(sampler))
    peak = config.train.learning_rate

    def optimizer(params: Any) -> torch.optim.Optimizer:
        holder = nn.Module()
        holder.params = nn.ParameterList([p for p in params if p.requires_grad])
        return build_optimizer(config, holder)

    def scheduler(optim: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(optim, lambda step: schedule.lr_at(step) / peak)

    return TrainingSetup(
        model=model,
        loss_fn=SupConScalar(config),
        optimizer=optimizer,
        train_loader=torch.utils.data.DataLoader(
            torch_dataset, batch_sampler=sampler, collate_fn=collate_batch
        ),
        labels=dataset.labels,
        scheduler=scheduler,
        scheduler_interval="step",
        epochs=config.train.num_epochs,
        val_loader=torch.utils.data.DataLoader(
            torch_dataset,
            batch_sampler=RowBatches(val_rows, EVAL_BATCH_SIZE),  # as the trainer evaluates
            collate_fn=collate_batch,
        ),
        class_names=list(dataset.class_names),
        device=resolve_device(config.train.device),
        seed=config.train.seed,
        parameter_group=quad_module_of,
        config=config,
    )


def quad_module_of(parameter_name: str) -> str:
    """The module a parameter of the quadmodal model belongs to: `encoders.<modality>.backbone`,
    `encoders.<modality>.head` or `fusion`."""
    parts = parameter_name.split(".")
    return ".".join(parts[:3]) if parts[0] == "encoders" else parts[0]
