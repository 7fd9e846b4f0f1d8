"""loss-bounds: how far the loss can fall on the batches the sampler really yields, measured."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from quad_doctor.checks.base import Check, SkipCheck
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Finding, Severity
from quad_doctor.trainer.losses import positives_per_anchor, supcon_collapse_value, supcon_floor

# "Within a few hundredths": below this much room between floor and collapse value the loss
# cannot visibly move (the original run sat at 3.4340 with 0.0 room).
NO_ROOM_CRITICAL = 0.05
# Past half such batches, most steps cannot lower the loss (as sampler-class-mix's threshold).
STUCK_BATCHES_CRITICAL = 0.5
# Less than a quarter of the collapse value as room: learning is possible but weak.
LITTLE_ROOM_WARNING = 0.25
# Real batches the untrained model is evaluated on; enough for a stable mean, cheap on CPU.
PROBE_BATCHES = 3
# An untrained loss this close to the collapse value (share of the room), with outputs whose
# spread is this small against their norm, means the outputs are collapsed at initialisation.
COLLAPSED_START_SHARE = 0.02
COLLAPSED_SPREAD = 1e-3
# Collapse values within this of ln(B-1) are named so: SupCon's, whatever its temperature.
LN_MATCH = 1e-3
# A loss at its floor explains what gradients, the LR curve and the embeddings then show.
CRITICAL_EXPLAINS = (
    "lr-range-test",
    "gradient-flow",
    "embedding-collapse",
    "loss-pinned",
    "plateau",
)


class LossBounds(Check):
    """The loss's collapse value and floor on the real batches, measured by probing `loss_fn`.

    What it checks:
        For every batch of the first epoch (labels only; at most 64 batches, evenly spread), it
        calls the loss with synthetic outputs of the model's own width: every row the same (zero),
        which gives the collapse value, the loss of a model that ignores its input (ln(B-1) for
        SupCon at any temperature, (T/T_base)·ln(B-1) for the SupContrast formula with a base
        temperature, ln K for cross-entropy on a balanced batch); and every class on its own
        direction at the model's output norm (and at 10× and 100× it when the model does not fix
        the norm), which gives the floor (ln P for SupCon's anchors with P positives). The room
        between the two is what training can gain; the evidence shows the median batch and the
        share of batches with no room. It also runs the untrained model on a few real batches to
        show where training starts, and warns when that start is the collapse value with
        collapsed outputs.

    Why it matters:
        Training can only move the loss from about the collapse value down towards the floor.
        When the floor is within a few hundredths of the collapse value, as with single-class
        batches under SupCon (P = B-1, floor = ln(B-1)), the loss cannot move at any learning
        rate: it sits at 3.4340 = ln(31) for batch 32. Because the bounds are measured, they hold
        for losses nobody here has seen.

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
        batch_labels, ranks = ctx.contrast_batches()
        probe = ctx.output_probe
        if not probe["probe"]:
            raise SkipCheck(
                f"the model's outputs are {probe['shape']}, not one finite row per sample, so "
                "the loss cannot be probed with synthetic outputs"
            )
        measured = ctx.bound_batches(batch_labels)
        bounds = [ctx.loss_bounds(labels) for labels in measured]
        floors = np.array([b.floor for b in bounds])
        collapses = np.array([b.collapse for b in bounds])
        evidence: dict[str, object] = {"probed_batches": len(measured)}
        untrained = self._untrained_loss(ctx, ctx.epoch_batches()[:PROBE_BATCHES])
        evidence["untrained_loss"] = round(untrained, 4) if math.isfinite(untrained) else None
        evidence["output_norm"] = round(probe["norm"], 4)
        evidence["output_norm_fixed"] = probe["fixed_norm"]
        size = len(batch_labels[0])  # all ranks' batches together when SupCon gathers them
        if ranks:
            evidence |= {
                "world_size": ranks["world_size"],
                "gather_features": ranks["gather_features"],
            }
        without = sum(int((positives_per_anchor(b) == 0).all()) for b in measured)
        finding = bounds_finding(floors, collapses, size, without, **evidence)
        if finding is None:
            finding = self._collapsed_start(probe, untrained, floors, collapses, evidence)
        if finding is not None:
            yield finding

    @staticmethod
    def _untrained_loss(ctx: DiagnosisContext, batches: list[np.ndarray]) -> float:
        """Mean loss of the untrained model on real batches (on a copy, without grad)."""
        model = ctx.model_copy()
        losses = []
        with torch.no_grad():
            for rows in batches:
                if not (positives_per_anchor(ctx.labels[rows]) > 0).any() and ctx.config:
                    continue  # SupCon without a positive pair is 0 by definition
                losses.append(float(ctx.step_loss(model, ctx.batch(rows))))
        return float(np.mean(losses)) if losses else math.nan

    def _collapsed_start(self, probe, untrained, floors, collapses, evidence) -> Finding | None:
        """A warning when the untrained outputs are one point and the loss starts at collapse."""
        collapse = float(np.median(collapses))
        room = collapse - float(np.median(floors))
        spread = probe["spread"] / max(probe["norm"], 1e-12)
        if not (math.isfinite(untrained) and room > 0):
            return None
        if abs(untrained - collapse) > COLLAPSED_START_SHARE * room or spread > COLLAPSED_SPREAD:
            return None
        return Finding(
            LossBounds.name,
            Severity.WARNING,
            f"the untrained model's outputs are collapsed: its loss starts at the collapse value "
            f"{collapse:.4f} (output spread {spread:.1e} of their norm)",
            {
                **evidence,
                "collapse_value": round(collapse, 4),
                "floor": round(collapse - room, 4),
                "output_spread": float(f"{spread:.3g}"),
            },
            "Every sample maps to (nearly) the same output before training, so the gradients that "
            "would separate classes are ~0. Look for a layer that erases the input (a LayerNorm "
            "over very few features, a zero-initialised projection, a saturated activation).",
        )


def loss_bounds_finding(
    batches: list[np.ndarray], batch_size: int, **evidence: object
) -> Finding | None:
    """The loss-bounds finding for SupCon on these batches' labels (its bounds are known in
    closed form: ln(B-1) and mean ln P), or None when the loss has room to fall. The live doctor
    judges the trainer's own SupCon with it."""
    floors = np.array([supcon_floor(b) for b in batches])
    collapses = np.array([supcon_collapse_value(len(b)) for b in batches])
    # SupCon is 0 on a batch without a positive pair, whatever the outputs
    learnable = np.isfinite(floors)
    floors = np.where(learnable, floors, 0.0)
    collapses = np.where(learnable, collapses, 0.0)
    without = int((~learnable).sum())
    return bounds_finding(floors, collapses, batch_size, without, **evidence)


def bounds_finding(
    floors: np.ndarray,
    collapses: np.ndarray,
    batch_size: int,
    batches_without_positives: int,
    **evidence: object,
) -> Finding | None:
    """The loss-bounds finding for these batches' floors and collapse values, or None when the
    loss has room to fall. `evidence` adds what the caller measured besides."""
    rooms = collapses - floors
    evidence = {
        "batch_size": batch_size,
        "batches": len(floors),
        "batches_without_positives": batches_without_positives,
        **evidence,
    }
    if (
        batches_without_positives == len(floors)
        and np.allclose(collapses, 0)
        and np.allclose(floors, 0)
    ):
        return Finding(
            LossBounds.name,
            Severity.CRITICAL,
            "no batch has a positive pair: the loss is 0 whatever the outputs and carries no "
            "gradient",
            {**evidence, "floor": 0.0, "collapse_value": 0.0},
            "Make batches hold two or more samples of a class (see sampler-class-mix).",
            explains=CRITICAL_EXPLAINS,
        )
    stuck_share = float(np.mean(rooms < NO_ROOM_CRITICAL))
    floor = float(np.median(floors))
    collapse = float(np.median(collapses))
    room = float(np.median(rooms))
    evidence |= {
        "collapse_value": round(collapse, 4),
        "floor": round(floor, 4),
        "room_to_fall": round(room, 4),
        "batches_without_room_fraction": round(stuck_share, 4),
    }
    if stuck_share > STUCK_BATCHES_CRITICAL:
        named = f"{collapse:.4f}"
        if batch_size > 2 and abs(collapse - supcon_collapse_value(batch_size)) < LN_MATCH:
            named = f"ln(B-1) = ln({batch_size - 1}) = {collapse:.4f}"
        return Finding(
            LossBounds.name,
            Severity.CRITICAL,
            f"the loss cannot move in {stuck_share:.0%} of batches: their floor {floor:.4f} "
            f"is the collapse value {named}",
            evidence,
            "Mix classes within each batch; no learning rate can lower a loss that is "
            "already at its floor.",
            explains=CRITICAL_EXPLAINS,
        )
    if room < LITTLE_ROOM_WARNING * abs(collapse):
        return Finding(
            LossBounds.name,
            Severity.WARNING,
            f"the loss can fall only {room:.2f} below its start value {collapse:.2f}",
            evidence,
            "Use more classes per batch or a larger batch to give the loss room to learn.",
        )
    return None
