"""Supervised contrastive loss (Khosla et al. 2020, the L_out form) and its analytic bounds.

For anchor i with positives P(i) (other samples of its class) and all other samples A(i):

    loss_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/tau) / sum_{a in A(i)} exp(z_i.z_a/tau) )

By Jensen, loss_i >= ln |P(i)|, reached when the positives are equally similar and the negatives
vanish from the denominator. Fully collapsed embeddings make every logit equal, so loss_i = ln(B-1)
whatever the labels; a single-class batch gives every anchor B-1 positives, so its floor is that
same ln(B-1): a model fed single-class batches has nothing to learn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from quad_doctor.trainer.config import TrainConfig

# Khosla et al.'s setting, and the original project's: the config's default
DEFAULT_TEMPERATURE = TrainConfig.temperature


def supcon_collapse_value(batch_size: int) -> float:
    """ln(B-1): the loss of fully collapsed embeddings, and the floor of a single-class batch."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")
    return math.log(batch_size - 1)


def positives_per_anchor(labels: np.ndarray | Tensor | Sequence[int]) -> np.ndarray:
    """For each sample, how many other samples in the batch share its label."""
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels).reshape(-1)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse] - 1


def supcon_floor(labels: np.ndarray | Tensor | Sequence[int]) -> float:
    """The infimum of the SupCon loss for a batch's labels: mean ln(P) over anchors with P >= 1.

    NaN when no anchor has a positive (the loss is then undefined and `SupConLoss` returns 0).
    """
    positives = positives_per_anchor(labels)
    positives = positives[positives >= 1]
    if positives.size == 0:
        return math.nan
    return float(np.log(positives).mean())


@dataclass(frozen=True)
class SupConOutput:
    """The loss and how many anchors it averaged over."""

    loss: Tensor  # scalar; mean over anchors with >= 1 positive, 0 (still with grad) when none has
    num_anchors: int  # anchors that contributed
    anchors_without_positive: int  # anchors excluded because no other sample shares their label


class SupConLoss(nn.Module):
    """Supervised contrastive loss over features used as given (the model already L2-normalises).

    Computed in float32 even under autocast, where fp16 logits divided by a small temperature
    would overflow.
    """

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, features: Tensor, labels: Tensor) -> SupConOutput:
        if features.ndim != 2 or labels.ndim != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(
                f"expected features (B, D) and labels (B,), got {tuple(features.shape)} "
                f"and {tuple(labels.shape)}"
            )
        batch = features.shape[0]
        labels = labels.to(features.device)
        self_pairs = torch.eye(batch, dtype=torch.bool, device=features.device)
        positives = (labels[:, None] == labels[None, :]) & ~self_pairs
        positive_counts = positives.sum(dim=1)
        has_positive = positive_counts > 0
        num_anchors = int(has_positive.sum())
        if num_anchors == 0:
            # keeps the graph connected so backward() and DDP's gradient hooks still run
            return SupConOutput(features.sum() * 0.0, 0, batch)

        with torch.autocast(device_type=features.device.type, enabled=False):
            z = features.float()
            logits = (z @ z.T) / self.temperature
            # the anchor is not its own contrast: exp(-inf) = 0 drops it from the denominator
            logits = logits.masked_fill(self_pairs, -math.inf)
            # logsumexp subtracts the row max over a != i itself, so no exp overflows
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            # where(), not a product: 0 * (-inf) on the diagonal would be NaN
            positive_log_prob = torch.where(positives, log_prob, 0.0).sum(dim=1)
            anchor_loss = -positive_log_prob[has_positive] / positive_counts[has_positive]
            loss = anchor_loss.mean()
        return SupConOutput(loss, num_anchors, batch - num_anchors)
