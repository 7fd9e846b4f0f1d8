"""plateau: no downward trend after warm-up, with the loss still near where it started."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from quad_doctor.findings import Finding, Severity, significant
from quad_doctor.rules.base import Rule, RunFacts, StepRecord

# Plateau: no significant downward trend (slope t-statistic above -2) over 100 steps after
# warm-up, while the loss has fallen less than a quarter of the way from its start to its floor.
# Healthy default: 78 % of the way down when warm-up ends, so it never fires.
PLATEAU_WINDOW = 100
PLATEAU_T = -2.0
PLATEAU_PROGRESS = 0.25
PLATEAU_EVERY = 10  # a line fit over 100 points costs ~0.1 ms: not every step


class PlateauRule(Rule):
    """No downward trend over a window after warm-up, with the loss still near where it started.

    What it checks:
        A line fitted to the last 100 losses after warm-up: a slope not significantly below zero
        (t > -2) while the loss has gone less than a quarter of the way from its start to the
        batches' floor.

    Why it matters:
        Training that does not move wastes the whole run; a run that has converged is not flagged.

    Example:
        `--set train.learning_rate=1e-10 --set train.warmup_epochs=0`: flat for 100 steps at an
        LR below what moves the weights.

    Fix:
        Raise the LR if it is negligible (`quad-doctor lr-range-test`); else see the findings above.
    """

    name = "plateau"
    order = 94

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.window: deque[float] = deque(maxlen=PLATEAU_WINDOW)
        self.lrs: deque[float] = deque(maxlen=PLATEAU_WINDOW)
        self.start: list[float] = []  # the first window's losses: where training started
        self.floors: deque[float] = deque(maxlen=PLATEAU_WINDOW)

    def after_update(self, record: StepRecord) -> list[Finding]:
        if not math.isfinite(record.loss):
            return []
        if len(self.start) < PLATEAU_WINDOW:
            self.start.append(record.loss)
        if record.step < self.facts.warmup_steps:
            return []
        self.window.append(record.loss)
        self.lrs.append(record.lr)
        self.floors.append(record.floor)
        if self.fired or len(self.window) < PLATEAU_WINDOW or record.step % PLATEAU_EVERY:
            return []
        losses = np.array(self.window)
        x = np.arange(len(losses), dtype=float)
        slope, intercept = np.polyfit(x, losses, 1)
        residual = losses - (slope * x + intercept)
        spread = math.sqrt(((x - x.mean()) ** 2).sum())
        error = residual.std(ddof=2) / spread if spread else math.inf
        t = slope / error if error > 0 else (0.0 if slope == 0 else math.copysign(math.inf, slope))
        start = float(np.mean(self.start))
        floor = float(np.nanmean(self.floors)) if np.isfinite(self.floors).any() else math.nan
        progress = (start - losses.mean()) / (start - floor) if start > floor else 0.0
        if t < PLATEAU_T or progress >= PLATEAU_PROGRESS:
            return []
        self.fired = True
        lr = float(np.median(self.lrs))
        negligible = lr < self.facts.negligible_lr
        why = (
            f"at lr {lr:.2g}, below what moves the weights (~{self.facts.negligible_lr:.1g})"
            if negligible
            else f"at lr {lr:.2g}"
        )
        return [
            Finding(
                self.name,
                Severity.WARNING,
                f"the loss has not fallen for {PLATEAU_WINDOW} steps ({losses.mean():.4f}, "
                f"{progress:.0%} of the way from its start {start:.4f} to its floor) {why}",
                {
                    "steps": f"{record.step - PLATEAU_WINDOW + 1}-{record.step}",
                    "loss_mean": round(float(losses.mean()), 4),
                    "slope_per_100_steps": significant(100 * slope),
                    "slope_t_statistic": significant(t),
                    "start_loss": round(start, 4),
                    "batch_floor_mean": round(floor, 4),
                    "progress_to_floor": round(progress, 3),
                    "lr_median": lr,
                },
                "Raise train.learning_rate (`quad-doctor lr-range-test` suggests one)"
                if negligible
                else "If the class mix and the LR are fine (see any findings above), try "
                "`quad-doctor lr-range-test` for the LR and `quad-doctor diagnose` for the rest.",
            )
        ]
