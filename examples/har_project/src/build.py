"""Everything a run needs, built from one config: shared by training and by the doctor setup."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Sampler

import quad_doctor

from .config import resolve_data_dir
from .data import HARDataset
from .losses import SupConLoss
from .models import QuadModalNet
from .samplers import StratifiedBatchSampler
from .schedule import cosine_with_warmup

# labels, batch_size, seed -> a sampler yielding lists of dataset indices
SamplerFactory = Callable[[Sequence[int], int, int], Sampler]

SAMPLERS: dict[str, SamplerFactory] = {
    "stratified": lambda labels, batch_size, seed: StratifiedBatchSampler(labels, batch_size, seed),
    # the fix quad-doctor proposes: every class in every batch
    "quad_doctor": lambda labels, batch_size, seed: quad_doctor.StratifiedBatchSampler(
        labels, batch_size=batch_size, seed=seed
    ),
}


@dataclass
class Training:
    """The pieces of one training run."""

    config: dict[str, Any]
    train_set: HARDataset
    val_set: HARDataset
    model: QuadModalNet
    criterion: SupConLoss
    optimizer: AdamW
    scheduler: LambdaLR
    train_loader: DataLoader
    val_loader: DataLoader | None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_training(config: dict[str, Any], sampler: SamplerFactory | None = None) -> Training:
    """Datasets, loaders, model, loss, optimizer and per-step LR schedule for ``config``.

    ``sampler`` replaces the batch sampler named by ``train.sampler``.
    """
    data_cfg, model_cfg, train_cfg = config["data"], config["model"], config["train"]
    torch.manual_seed(train_cfg["seed"])

    data_dir = resolve_data_dir(config)
    train_set = HARDataset(data_dir, "train")
    val_set = HARDataset(data_dir, "val")

    make_sampler = sampler or SAMPLERS[train_cfg["sampler"]]
    batch_sampler = make_sampler(train_set.labels, train_cfg["batch_size"], train_cfg["seed"])
    train_loader = DataLoader(
        train_set, batch_sampler=batch_sampler, num_workers=data_cfg["num_workers"]
    )
    val_loader = None
    if len(val_set) > 0:
        val_loader = DataLoader(
            val_set, batch_size=train_cfg["batch_size"], num_workers=data_cfg["num_workers"]
        )

    model = QuadModalNet(
        embed_dim=model_cfg["embed_dim"],
        vocab_size=model_cfg["vocab_size"],
        dropout=model_cfg["dropout"],
    )
    criterion = SupConLoss(train_cfg["temperature"], train_cfg["base_temperature"])
    optimizer = AdamW(
        model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"]
    )
    steps_per_epoch = len(train_loader)
    scheduler = cosine_with_warmup(
        optimizer,
        warmup_steps=train_cfg["warmup_epochs"] * steps_per_epoch,
        total_steps=train_cfg["epochs"] * steps_per_epoch,
        start_factor=train_cfg["warmup_start_lr"] / train_cfg["lr"],
        min_factor=train_cfg["min_lr"] / train_cfg["lr"],
    )
    return Training(
        config=config,
        train_set=train_set,
        val_set=val_set,
        model=model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        val_loader=val_loader,
    )
