"""loss-pinned: the loss sitting at ln(B-1), or at its batches' floor."""

from __future__ import annotations

from collections import deque

import numpy as np

from quad_doctor.findings import Finding, Severity
from quad_doctor.rules.base import Rule, RunFacts, StepRecord

# Pinned: the mean loss of the last 20 steps within 0.001 of ln(B-1), with a standard deviation
# under 0.0025. The sequential sampler sits at 3.4339-3.4350 from epoch 2 (sd ~5e-4); lr 30 at
# batch 16 at 2.7041-2.7100 around ln(15) = 2.7081 (sd 0.0013); a healthy warm-up hovers at
# 3.41-3.45 (sd ~0.01).
PINNED_WINDOW = 20
PINNED_TOLERANCE = 1e-3
PINNED_SPREAD = 2.5e-3
PINNED_NEAR = 0.02
# The batch floor must lie this far below ln(B-1) for "at the floor" to be a different finding.
FLOOR_BELOW_COLLAPSE = 0.05


class LossPinnedRule(Rule):
    """The loss sitting at ln(B-1), or at its batches' floor, while the LR is not negligible.

    What it checks:
        The last 20 losses: mean within 0.001 of ln(B-1) with a standard deviation under 0.0025,
        at learning rates that can move the weights (above w * 1e-4, w the typical weight size).

    Why it matters:
        ln(B-1) is the loss of collapsed embeddings and the floor of single-class batches: the
        original failure sat at 3.4340 = ln(31) for days at every learning rate.

    Example:
        `--set train.sampler=sequential`: pinned at 3.4350 over steps 21-40.

    Fix:
        Mix classes in every batch (sampler-class-mix); no learning rate moves a loss at its floor.
    """

    name = "loss-pinned"
    order = 93

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.window: deque[StepRecord] = deque(maxlen=PINNED_WINDOW)
        self.fired_signals: set[str] = set()
        self.near = 0  # steps in a row with the loss near ln(B-1) or the batch floor

    def after_update(self, record: StepRecord) -> list[Finding]:
        self.window.append(record)
        # A loss this far off cannot sit in a window with sd < PINNED_SPREAD: 20 values with one
        # at distance d from their mean have sd >= 0.22 d. Skips the statistics on healthy steps.
        near = min(abs(record.loss - record.collapse), abs(record.loss - record.floor))
        self.near = self.near + 1 if near < PINNED_NEAR else 0
        if self.near < PINNED_WINDOW:
            return []
        if min(r.lr for r in self.window) < self.facts.negligible_lr:
            return []  # too small an LR explains a still loss; the plateau rule says so
        losses = np.array([r.loss for r in self.window])
        if not losses.std() < PINNED_SPREAD:
            return []
        collapse = np.array([r.collapse for r in self.window])
        floor = np.array([r.floor for r in self.window])
        at_collapse = abs(float(np.mean(losses - collapse))) < PINNED_TOLERANCE
        at_floor = abs(float(np.mean(losses - floor))) < PINNED_TOLERANCE and bool(
            np.all(floor < collapse - FLOOR_BELOW_COLLAPSE)
        )
        signal = "collapse" if at_collapse else "floor" if at_floor else None
        if signal is None or signal in self.fired_signals:
            return []
        self.fired_signals.add(signal)
        evidence = {
            "signal": signal,
            "steps": f"{self.window[0].step}-{record.step}",
            "loss_mean": round(float(losses.mean()), 4),
            "loss_min": round(float(losses.min()), 4),
            "loss_max": round(float(losses.max()), 4),
            "collapse_value_ln_b_minus_1": round(record.collapse, 4),
            "batch_floor": round(record.floor, 4),
            "lr_range": [min(r.lr for r in self.window), max(r.lr for r in self.window)],
        }
        batch = len(record.labels)
        if signal == "collapse":
            return [
                Finding(
                    self.name,
                    Severity.CRITICAL,
                    f"the loss is pinned at ln(B-1) = ln({batch - 1}) = {record.collapse:.4f}: "
                    f"{losses.mean():.4f} over steps {evidence['steps']} at lr up to "
                    f"{evidence['lr_range'][1]:.2g}",
                    evidence,
                    "ln(B-1) is the loss of collapsed embeddings and the floor of a single-class "
                    "batch: fix the batches' class mix (sampler-class-mix) or an LR that "
                    "collapsed the model; no other LR will move it.",
                    explains=("plateau",),
                )
            ]
        return [
            Finding(
                self.name,
                Severity.WARNING,
                f"the loss sits at its batches' floor {record.floor:.4f} over steps "
                f"{evidence['steps']}: nothing is left to learn on these batches",
                evidence,
                "More classes per batch (or a larger batch) give SupCon negatives to learn from.",
                explains=("plateau",),
            )
        ]
