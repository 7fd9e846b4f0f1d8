"""Supervised contrastive loss (Khosla et al., 2020, "Supervised Contrastive Learning")."""

from __future__ import annotations

import torch
from torch import nn


class SupConLoss(nn.Module):
    """SupCon loss, as in the paper's reference implementation.

    ``features`` is ``[bsz, n_views, dim]`` (or ``[bsz, dim]`` for a single view) and should be
    L2-normalised. Samples with the same label are positives of each other; with neither
    ``labels`` nor ``mask`` it reduces to SimCLR's unsupervised loss. The loss is scaled by
    ``temperature / base_temperature``. Anchors without a positive in the batch contribute
    nothing (the reference implementation returns NaN for them).
    """

    def __init__(self, temperature: float = 0.07, base_temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if features.dim() == 2:
            features = features.unsqueeze(1)
        if features.dim() > 3:
            features = features.flatten(2)
        bsz, n_views = features.shape[:2]
        device = features.device

        if labels is not None and mask is not None:
            raise ValueError("pass labels or mask, not both")
        if labels is not None:
            labels = labels.reshape(-1, 1)
            if labels.shape[0] != bsz:
                raise ValueError("one label per sample expected")
            mask = torch.eq(labels, labels.T).float().to(device)
        elif mask is None:
            mask = torch.eye(bsz, device=device)
        else:
            mask = mask.float().to(device)

        # Every view of every sample is an anchor and a contrast sample ("all" mode).
        contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
        logits = contrast @ contrast.T / self.temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # stability

        n = bsz * n_views
        not_self = 1.0 - torch.eye(n, device=device)
        positives = mask.repeat(n_views, n_views) * not_self

        exp_logits = torch.exp(logits) * not_self
        log_prob = logits - torch.log(exp_logits.sum(dim=1, keepdim=True))

        positives_per_anchor = positives.sum(dim=1)
        has_positive = positives_per_anchor > 0
        if not has_positive.any():
            return features.sum() * 0.0
        mean_log_prob_pos = (positives * log_prob).sum(dim=1)[has_positive] / (
            positives_per_anchor[has_positive]
        )

        loss = -(self.temperature / self.base_temperature) * mean_log_prob_pos
        return loss.mean()
