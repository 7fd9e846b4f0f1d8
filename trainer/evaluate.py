"""Validation: nearest-class-mean accuracy of the embeddings (DESIGN.md's `val_accuracy`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from quad_doctor.trainer.dataset import QuadDataset
from quad_doctor.trainer.distributed import World, gather_objects

EVAL_BATCH_SIZE = 256


@torch.no_grad()
def embed(
    model: torch.nn.Module, dataset: QuadDataset, rows: np.ndarray, device: torch.device
) -> torch.Tensor:
    """L2-normalised embeddings of `rows`, computed in eval mode; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(rows), EVAL_BATCH_SIZE):
            batch = dataset.batch(rows[start : start + EVAL_BATCH_SIZE]).to(device)
            features = batch.forward(model)
            chunks.append(F.normalize(features.float(), dim=1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0)
    finally:
        model.train(was_training)


def nearest_class_mean_accuracy(
    train_embeddings: torch.Tensor,
    train_labels: np.ndarray,
    val_embeddings: torch.Tensor,
    val_labels: np.ndarray,
) -> float:
    """Share of validation samples whose most cosine-similar training class mean is their class."""
    train_labels_t = torch.as_tensor(train_labels, dtype=torch.long)
    classes = int(max(train_labels.max(initial=0), val_labels.max(initial=0))) + 1
    sums = torch.zeros(classes, train_embeddings.shape[1])
    sums.index_add_(0, train_labels_t, train_embeddings)
    present = torch.bincount(train_labels_t, minlength=classes) > 0
    means = F.normalize(sums, dim=1)
    similarity = val_embeddings @ means.T
    similarity[:, ~present] = -float("inf")  # a class never seen in training cannot be predicted
    predicted = similarity.argmax(dim=1).numpy()
    return float((predicted == val_labels).mean()) if len(val_labels) else float("nan")


def validation_accuracy(
    model: torch.nn.Module,
    dataset: QuadDataset,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    device: torch.device,
    world: World | None = None,
) -> float:
    """Nearest-class-mean accuracy on the validation split, class means from the training split.

    Distributed, each rank embeds every world_size-th row and the embeddings are gathered, so
    every rank gets the same accuracy for a share of the work.
    """
    world = world or World()
    shards = []
    for rows in (train_rows, val_rows):
        mine = embed(model, dataset, rows[world.rank :: world.world_size], device)
        parts = gather_objects(mine, world)
        # rows[r::W] from every rank r, back in row order
        width = next((part.shape[1] for part in parts if part.ndim == 2), 0)
        merged = torch.empty(len(rows), width)
        for rank, part in enumerate(parts):
            if len(part):
                merged[rank :: world.world_size] = part
        shards.append(merged)
    return nearest_class_mean_accuracy(
        shards[0], dataset.labels[train_rows], shards[1], dataset.labels[val_rows]
    )
