"""loss-bounds: how far SupCon can fall on the batches the sampler really yields."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from quad_doctor.checks.base import Check
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Finding, Severity
from quad_doctor.trainer.losses import supcon_collapse_value, supcon_floor

# "Within a few hundredths": below this much room between floor and collapse value the loss
# cannot visibly move (the original run sat at 3.4340 with 0.0 room).
NO_ROOM_CRITICAL = 0.05
# Past half such batches, most steps cannot lower the loss (as sampler-class-mix's threshold).
STUCK_BATCHES_CRITICAL = 0.5
# Less than a quarter of the collapse value as room: learning is possible but weak.
LITTLE_ROOM_WARNING = 0.25
# Real batches the untrained model is evaluated on; enough for a stable mean, cheap on CPU.
PROBE_BATCHES = 3
# A loss at its floor explains what gradients, the LR curve and the embeddings then show.
CRITICAL_EXPLAINS = (
    "lr-range-test",
    "gradient-flow",
    "embedding-collapse",
    "loss-pinned",
    "plateau",
)


class LossBounds(Check):
    """Analytic SupCon bounds for the real batches: the collapse value, the floor, the room between.

    What it checks:
        For every batch of the first epoch (labels from the manifest): the collapse value
        ln(B-1), which is the loss of fully collapsed embeddings, and the floor, the mean over
        anchors of ln P (P = the anchor's positives), which no model can go below; the evidence
        shows the median batch and the share of batches with no room between the two. It also runs
        the untrained model on a few real batches to show where training starts.

    Why it matters:
        Training can only move the loss from about the collapse value down towards the floor.
        When the floor is within a few hundredths of the collapse value, as with single-class
        batches (P = B-1, floor = ln(B-1)), the loss cannot move at any learning rate: it sits
        at 3.4340 = ln(31) for batch 32.

    Example:
        `--set train.sampler=sequential`: floor 3.4340, collapse value 3.4340, room 0.0000;
        the stratified sampler gives floor about 1.5 and room about 1.9.

    Fix:
        Give every batch several classes (see `sampler-class-mix`): the room grows as the
        positives per anchor shrink relative to the batch.
    """

    name = "loss-bounds"
    phase = "model"
    order = 40

    def run(self, ctx: DiagnosisContext) -> Iterator[Finding]:
        batches = ctx.epoch_batches()
        batch_labels, ranks = ctx.contrast_batches()
        evidence: dict[str, object] = {}
        if any(np.isfinite(supcon_floor(b)) for b in batch_labels):
            untrained = self._untrained_loss(ctx, batches[:PROBE_BATCHES])
            evidence["untrained_loss"] = round(untrained, 4) if math.isfinite(untrained) else None
        size = len(batch_labels[0])  # all ranks' batches together when SupCon gathers them
        if ranks:
            evidence |= {
                "world_size": ranks["world_size"],
                "gather_features": ranks["gather_features"],
            }
        finding = loss_bounds_finding(batch_labels, size, **evidence)
        if finding is not None:
            yield finding

    @staticmethod
    def _untrained_loss(ctx: DiagnosisContext, batches: list[np.ndarray]) -> float:
        """Mean SupCon loss of the untrained model on real batches (on a copy, without grad)."""
        model = ctx.model_copy()
        losses = []
        with torch.no_grad():
            for rows in batches:
                batch = ctx.batch(rows)
                features = model(batch.video, batch.audio, batch.sensor, batch.text)
                output = ctx.loss_fn(features, batch.labels)
                if output.num_anchors:
                    losses.append(output.loss.item())
        return float(np.mean(losses)) if losses else math.nan


def loss_bounds_finding(
    batches: list[np.ndarray], batch_size: int, **evidence: object
) -> Finding | None:
    """The loss-bounds finding for these batches' labels, or None when the loss has room to fall.

    Shared by the pre-flight check (a whole epoch of the sampler) and the live doctor (the
    batches training really saw); `evidence` adds what the caller measured besides.
    """
    floors = np.array([supcon_floor(b) for b in batches])
    collapses = np.array([supcon_collapse_value(len(b)) for b in batches])
    learnable = np.isfinite(floors)
    evidence = {
        "batch_size": batch_size,
        "collapse_value_ln_b_minus_1": round(supcon_collapse_value(batch_size), 4),
        "batches": len(batches),
        "batches_without_positives": int((~learnable).sum()),
        **evidence,
    }
    if not learnable.any():
        return Finding(
            LossBounds.name,
            Severity.CRITICAL,
            "no batch has a positive pair: the SupCon loss is 0 and carries no gradient",
            {**evidence, "supcon_floor_mean_ln_p": None},
            "Make batches hold two or more samples of a class (see sampler-class-mix).",
            explains=CRITICAL_EXPLAINS,
        )
    rooms = collapses[learnable] - floors[learnable]
    stuck_share = float(np.mean(rooms < NO_ROOM_CRITICAL))
    floor = float(np.median(floors[learnable]))
    collapse = float(np.median(collapses[learnable]))
    room = float(np.median(rooms))
    evidence |= {
        "supcon_floor_mean_ln_p": round(floor, 4),
        "room_to_fall": round(room, 4),
        "batches_without_room_fraction": round(stuck_share, 4),
    }
    if stuck_share > STUCK_BATCHES_CRITICAL:
        return Finding(
            LossBounds.name,
            Severity.CRITICAL,
            f"the loss cannot move in {stuck_share:.0%} of batches: their floor {floor:.4f} "
            f"is the collapse value ln(B-1) = ln({batch_size - 1}) = {collapse:.4f}",
            evidence,
            "Mix classes within each batch; no learning rate can lower a loss that is "
            "already at its floor.",
            explains=CRITICAL_EXPLAINS,
        )
    if room < LITTLE_ROOM_WARNING * collapse:
        return Finding(
            LossBounds.name,
            Severity.WARNING,
            f"the loss can fall only {room:.2f} below its start value {collapse:.2f}",
            evidence,
            "Use more classes per batch or a larger batch to give SupCon room to learn.",
        )
    return None
