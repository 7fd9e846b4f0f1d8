"""Distributed training: the process group torchrun sets up, and the few collectives training needs.

`quad-doctor train --nproc-per-node N` starts N copies of itself under `torch.distributed.run`;
each reads its rank from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK). Backend
gloo on CPU, nccl on CUDA. Everything here is a no-op for a single process.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from quad_doctor.trainer.errors import UsageError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """More than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes metrics, events, reports and checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True in a worker process that torchrun (or `quad-doctor train --nproc-per-node`) started."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_world(device: str) -> World:
    """Join the process group torchrun prepared (gloo on CPU, nccl on CUDA); one process: no-op.

    `device` is `train.device`; a backend this machine cannot run is a usage error.
    """
    if not launched_by_torchrun():
        return World()
    world = World(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    available = dist.is_nccl_available() if cuda else dist.is_gloo_available()
    if not available:
        raise UsageError(f"dist: the {backend} backend is not available in this torch build")
    if cuda:
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return world


def close_world(world: World) -> None:
    """Leave the process group (at the end of training), once every rank has got there.

    Without the barrier a rank that finishes first tears its connections down while rank 0 is
    still writing the report, and gloo aborts the other (seen as "terminate called without an
    active exception", 1 run in 5).
    """
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_features(features: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's features, concatenated in rank order; only this rank's part carries gradient.

    The usual contrastive all-gather: the other ranks' features are constants here (their own
    ranks backpropagate through them), so the loss sees the global batch while each rank's
    backward stays local. Batches must have the same size on every rank (the samplers ensure it).
    """
    if not world.distributed:
        return features
    gathered = [torch.empty_like(features) for _ in range(world.world_size)]
    dist.all_gather(gathered, features.detach().contiguous())
    gathered[world.rank] = features
    return torch.cat(gathered)


def gather_labels(labels: torch.Tensor, world: World) -> list[np.ndarray]:
    """Every rank's batch labels, in rank order (one small all-gather)."""
    return gather_step(labels, None, world)[0]


def gather_step(
    labels: torch.Tensor, loss: torch.Tensor | None, world: World
) -> tuple[list[np.ndarray], list[float]]:
    """Every rank's batch labels and, when given, its local loss: one small all-gather.

    The live doctor on rank 0 judges every rank's class mix and losses from these.
    """
    parts = [labels.detach().double().reshape(-1)]
    if loss is not None:
        parts.append(loss.detach().double().reshape(1))
    row = torch.cat(parts)
    rows = [torch.empty_like(row) for _ in range(world.world_size)]
    dist.all_gather(rows, row)
    table = torch.stack(rows).cpu()
    size = len(labels)
    losses = [float(r[size]) for r in table] if loss is not None else []
    return [r[:size].long().numpy() for r in table], losses


def average_gradients(model: torch.nn.Module, world: World) -> float:
    """Average the gradients over the ranks, as DDP would, after backward under `no_sync`;
    returns this rank's own gradient norm, measured before averaging."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    local = float(torch.stack(torch._foreach_norm(grads)).norm()) if grads else 0.0
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world.world_size
    for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        grad.copy_(averaged)
    return local


def after_backward(
    stop: bool, grad_norm: float, world: World, device: torch.device
) -> tuple[bool, list[float]]:
    """Whether any rank asked to stop, and every rank's own gradient norm: one all-gather."""
    if not world.distributed:
        return stop, [grad_norm]
    row = torch.tensor([float(stop), grad_norm], dtype=torch.float64, device=device)
    rows = [torch.empty_like(row) for _ in range(world.world_size)]
    dist.all_gather(rows, row)
    table = torch.stack(rows).cpu()
    return bool(table[:, 0].max() > 0), [float(v) for v in table[:, 1]]


def mean_over_ranks(value: float, world: World, device: torch.device) -> float:
    """The mean of `value` over the ranks (NaN anywhere gives NaN)."""
    if not world.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    result = float(total.item()) / world.world_size
    return result if math.isfinite(result) else math.nan


def gather_objects(value: object, world: World) -> list[object]:
    """`value` from every rank, in rank order (pickled; for small per-epoch data)."""
    if not world.distributed:
        return [value]
    gathered: list[object] = [None] * world.world_size
    dist.all_gather_object(gathered, value)
    return gathered
