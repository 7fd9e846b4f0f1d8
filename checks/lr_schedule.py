"""lr-schedule: the learning rate training will apply at every step, and what it can move."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from quad_doctor.checks.base import Check, SkipCheck
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Finding, Severity
from quad_doctor.lr_range import BELOW_PEAK
from quad_doctor.trainer.config import TrainConfig

# Adam(W) normalises each step to about `lr` per weight whatever the gradient's size, so over a
# run a weight moves at most the sum of the learning rates. Below a thousandth of the weights'
# typical size, every layer's output changes in the third decimal at most: nothing is learned.
# On the embedded default the bound at the peak is ~1.5 for learning_rate 1e-4, ~0.015 for
# 1e-6 (slow but real, ten times above this line) and ~1.5e-6 for 1e-10 (the story's flat run).
NEGLIGIBLE_MOVEMENT = 1e-3
# One Adam step moves every weight by about `lr`. At or past the weights' whole typical size
# (~0.07 at initialisation here) each step rewrites the weights: lr 1e-1 is 1.4 of it.
ABSURD_STEP = 1.0
# A tenth of that size per step (lr ≳ 7e-3 here) is far above what SupCon fine-tunes with
# (1e-4 trains the default to 0.94 accuracy, docs/benchmarks.md): worth a look, not yet broken.
LARGE_STEP = 0.1
# What a bad peak is replaced by: the trainer's default, which the convergence benchmark trains
# with (docs/benchmarks.md).
RECOMMENDED_LEARNING_RATE = 1e-4
# A repaired warm-up takes a tenth of training (the default's is a third; a tenth to a third
# are both common), and always leaves at least one epoch after it.
WARMUP_SHARE = 0.1
# Points of the per-step schedule the evidence carries, for a report to plot.
SCHEDULE_POINTS = 50


def sampled_schedule(lrs: np.ndarray, points: int = SCHEDULE_POINTS) -> list[list[float]]:
    """At most `points` evenly spaced [step, lr] pairs, first and last step included."""
    steps = np.unique(np.linspace(0, len(lrs) - 1, min(points, len(lrs))).round().astype(int))
    return [[int(step), float(f"{lrs[step]:.4g}")] for step in steps]


def repaired_warmup_epochs(num_epochs: int) -> int:
    """A warm-up of about `WARMUP_SHARE` of training, at least one epoch, always shorter than it."""
    return min(num_epochs - 1, max(1, round(num_epochs * WARMUP_SHARE)))


class LRScheduleCheck(Check):
    """The per-step learning-rate schedule training will apply, and how far it can move weights.

    What it checks:
        Samples the trainer's own schedule at every step of the run (`num_epochs` × steps per
        epoch): warm-up start, peak and end. Flags a warm-up as long as training, a warm-up start
        or `min_lr` above the peak, and a peak that is negligible or absurd against the scale of
        the trainable weights (the median RMS of their weight tensors). For Adam(W), whose step
        moves each weight by about `lr`, a run moves a weight by at most the sum of its learning
        rates; for SGD the step scales with the gradient, which a model-phase check does not see,
        so only the schedule's shape is judged.

    Why it matters:
        A learning rate of 1e-10 over 1,110 steps moves each weight by at most 1e-7, against
        weights of ~0.07: the loss stays flat and it looks like nothing else is wrong. An
        `lr` of 1e-1 moves each weight by more than its whole size at every step. A warm-up that
        never ends never reaches the peak; a warm-up start or `min_lr` above the peak turns the
        warm-up into a decay and the decay into a rise.

    Example:
        `--set train.learning_rate=1e-10`: "learning_rate 1e-10 cannot move the weights: 1,110
        steps at it move each by at most 1.5e-06 of their size (and warmup_start_lr 1e-07,
        min_lr 1e-06 lie above it)".

    Fix:
        Take `learning_rate` back to 1e-4 (the default the trainer converges with) when it is
        negligible or absurd; keep `warmup_start_lr` and `min_lr` a hundred times below it; warm
        up for a tenth to a third of `num_epochs`. The `lr-range-test` check measures the best
        learning rate on the real model.
    """

    name = "lr-schedule"
    phase = "model"
    order = 60

    def run(self, ctx: DiagnosisContext) -> Iterator[Finding]:
        evidence = self._measure(ctx)
        if ctx.config is not None:
            yield from self._verdicts(evidence, ctx.config.train)
        else:
            yield from self._user_verdicts(ctx, evidence)

    @staticmethod
    def _measure(ctx: DiagnosisContext) -> dict[str, Any]:
        """The applied schedule and the movement bound it gives against the weights' scale."""
        scale = ctx.weight_scale
        if scale is None or ctx.optimizer is None:
            raise SkipCheck("no parameter is trainable, so no learning rate applies")
        schedule = ctx.schedule
        lrs = np.array(schedule.all_steps())
        adam = ctx.adaptive
        peak = ctx.learning_rate
        sum_lr = float(lrs.sum())
        return {
            "lr_scheduler": ctx.config.train.lr_scheduler if ctx.config else schedule.scheduler,
            "optimizer": ctx.config.train.optimizer if ctx.config else type(ctx.optimizer).__name__,
            "adaptive_optimizer": adam,
            "total_steps": schedule.total_steps,
            "steps_per_epoch": schedule.steps_per_epoch,
            "warmup_steps": schedule.warmup_steps,
            "warmup_start_lr": float(lrs[0]),
            "peak_lr": peak,
            "max_applied_lr": float(lrs.max()),
            "end_lr": float(lrs[-1]),
            "sum_lr": float(f"{sum_lr:.4g}"),
            "weight_scale_rms": round(scale, 4),
            # Adam(W) only: SGD's step is lr × gradient, which this check does not measure.
            "relative_movement": float(f"{sum_lr / scale:.3g}") if adam else None,
            "peak_relative_movement": (
                float(f"{peak * schedule.total_steps / scale:.3g}") if adam else None
            ),
            "peak_step_fraction": float(f"{peak / scale:.3g}") if adam else None,
            "schedule": sampled_schedule(lrs),
            **({"schedule_note": schedule.note} if schedule.note else {}),
            **({"epochs": "not given: one epoch judged"} if not ctx.setup.epochs else {}),
        }

    def _user_verdicts(self, ctx: DiagnosisContext, evidence: dict[str, Any]) -> Iterator[Finding]:
        """The same judgements for a user's optimizer and scheduler, as code changes."""
        peak = evidence["peak_lr"]
        bad_peak = self._peak_verdict(evidence, peak)
        if bad_peak is not None:
            severity, title = bad_peak
            title = title.replace("learning_rate", "the learning rate")

            def recommended(setup):
                return setup.replace(optimizer=ctx.optimizer_factory(RECOMMENDED_LEARNING_RATE))

            rescheduled = ctx.setup.scheduler is not None
            yield Finding(
                self.name,
                severity,
                title,
                evidence,
                f"Use lr={RECOMMENDED_LEARNING_RATE:g} (a common AdamW fine-tuning rate), then "
                "confirm it with the lr-range-test.",
                explains=_explained_by_peak(evidence),
                code_change=f"optimizer = torch.optim.{type(ctx.optimizer).__name__}(params, "
                f"lr={RECOMMENDED_LEARNING_RATE:g}, ...)",
                # a scheduler instance is bound to the old optimizer: not applied automatically
                setup_patch=None if rescheduled else recommended,
            )
        total = evidence["total_steps"]
        if evidence["warmup_steps"] >= total and total > 1:
            yield Finding(
                self.name,
                Severity.ERROR,
                f"the schedule is still rising at the last of {total:,} steps: warm-up never ends "
                f"and the peak {peak:g} is never reached (it ends at {evidence['end_lr']:.3g})",
                evidence,
                "Make the warm-up a tenth to a third of training: its length is counted in the "
                "scheduler's steps (optimizer steps when it is stepped every batch, epochs when "
                "every epoch), a common slip when switching between the two.",
                code_change=f"warmup_steps = {max(1, round(total * WARMUP_SHARE))}  "
                f"# a tenth of the {total:,} steps",
            )
        if evidence["warmup_start_lr"] > peak * (1 + 1e-9):
            yield Finding(
                self.name,
                Severity.ERROR,
                f"the schedule starts at {evidence['warmup_start_lr']:g}, above the peak learning "
                f"rate {peak:g}: the warm-up lowers the learning rate",
                evidence,
                f"Start the warm-up below the peak (e.g. at {peak / BELOW_PEAK:g}).",
            )
        if evidence["end_lr"] > peak * (1 + 1e-9):
            yield Finding(
                self.name,
                Severity.ERROR,
                f"the schedule ends at {evidence['end_lr']:g}, above the peak learning rate "
                f"{peak:g}: the decay raises the learning rate",
                evidence,
                f"Decay below the peak (e.g. to {peak / BELOW_PEAK:g}).",
            )

    def _verdicts(self, evidence: dict[str, Any], config: TrainConfig) -> Iterator[Finding]:
        peak = config.learning_rate
        cosine = config.lr_scheduler == "cosine_warmup"
        warmup_applies = cosine and config.warmup_epochs > 0
        start_above = warmup_applies and config.warmup_start_lr > peak
        # judged even when a warm-up as long as training hides the decay: its repair exposes it
        floor_above = cosine and config.min_lr > peak

        def finding(severity: Severity, title: str, remedy: str, patch: dict, explains=()):
            return Finding(self.name, severity, title, evidence, remedy, patch, explains)

        bad_peak = self._peak_verdict(evidence, peak)
        if bad_peak is not None:
            severity, title = bad_peak
            # The new peak must stay above the warm-up start and the floor it would run between.
            patch: dict[str, object] = {"train.learning_rate": RECOMMENDED_LEARNING_RATE}
            if cosine and config.warmup_start_lr > RECOMMENDED_LEARNING_RATE:
                patch["train.warmup_start_lr"] = RECOMMENDED_LEARNING_RATE / BELOW_PEAK
            if cosine and config.min_lr > RECOMMENDED_LEARNING_RATE:
                patch["train.min_lr"] = RECOMMENDED_LEARNING_RATE / BELOW_PEAK
            above = [
                f"{key} {value:g}"
                for key, value, wrong in (
                    ("warmup_start_lr", config.warmup_start_lr, start_above),
                    ("min_lr", config.min_lr, floor_above),
                )
                if wrong
            ]
            if above:
                title += f" (and {', '.join(above)} lie above it)"
            yield finding(
                severity,
                title,
                f"Set train.learning_rate = {RECOMMENDED_LEARNING_RATE:g}, the default the trainer "
                "converges with, then confirm it with the lr-range-test.",
                patch,
                # a peak that cannot move the weights, or rewrites them, is why the range test
                # finds the configured learning rate too low or too high
                explains=_explained_by_peak(evidence),
            )
        if cosine and config.warmup_epochs >= config.num_epochs:
            epochs = repaired_warmup_epochs(config.num_epochs)
            yield finding(
                Severity.ERROR,
                f"warm-up ({config.warmup_epochs} epochs) lasts as long as training "
                f"({config.num_epochs}): the peak {peak:g} is never reached and nothing decays",
                f"Warm up for about a tenth of training: train.warmup_epochs = {epochs}.",
                {"train.warmup_epochs": epochs},
            )
        # With a bad peak, the peak's finding already repairs what lies above it.
        if start_above and bad_peak is None:
            start = peak / BELOW_PEAK
            yield finding(
                Severity.ERROR,
                f"warmup_start_lr {config.warmup_start_lr:g} is above learning_rate {peak:g}: "
                "the warm-up lowers the learning rate",
                f"Start the warm-up below the peak: train.warmup_start_lr = {start:g}.",
                {"train.warmup_start_lr": start},
            )
        if floor_above and bad_peak is None:
            floor = peak / BELOW_PEAK
            yield finding(
                Severity.ERROR,
                f"min_lr {config.min_lr:g} is above learning_rate {peak:g}: "
                "the cosine decay raises the learning rate",
                f"Decay below the peak: train.min_lr = {floor:g}.",
                {"train.min_lr": floor},
            )

    @staticmethod
    def _peak_verdict(evidence: dict[str, Any], peak: float) -> tuple[Severity, str] | None:
        if not evidence["adaptive_optimizer"]:
            return None  # SGD's step size depends on the gradient; only the shape is judged
        movement = evidence["peak_relative_movement"]
        step = evidence["peak_step_fraction"]
        if movement < NEGLIGIBLE_MOVEMENT:
            return Severity.ERROR, (
                f"learning_rate {peak:g} cannot move the weights: {evidence['total_steps']:,} "
                f"steps at it move each by at most {movement:.2g} of their size"
            )
        if step >= ABSURD_STEP:
            return Severity.ERROR, (
                f"learning_rate {peak:g} is absurd: each Adam step moves every weight by "
                f"{step:.2g}× its typical size ({evidence['weight_scale_rms']:.2g})"
            )
        if step >= LARGE_STEP:
            return Severity.WARNING, (
                f"learning_rate {peak:g} is very large: each Adam step moves every weight by "
                f"{step:.0%} of its typical size ({evidence['weight_scale_rms']:.2g})"
            )
        return None


def _explained_by_peak(evidence: dict[str, Any]) -> tuple[str, ...]:
    """A peak that cannot move the weights is why the range test calls it too low; one that
    rewrites them each step is also why the gradient probe sees exploding updates."""
    step = evidence["peak_step_fraction"]
    if step is not None and step >= LARGE_STEP:
        return ("lr-range-test", "gradient-flow")
    return ("lr-range-test",)
