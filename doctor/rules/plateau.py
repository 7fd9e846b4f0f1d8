"""plateau: no downward trend after warm-up, with the loss still near where it started."""

from __future__ import annotations

import math
import statistics
from collections import deque

from quad_doctor.findings import Finding, Severity, significant
from quad_doctor.rules.base import Rule, RunFacts, StepRecord

# Plateau: no significant downward trend (slope t-statistic above -2) over 100 steps after
# warm-up, while the loss has fallen less than a quarter of the way from its start to its floor.
# Healthy default: 78 % of the way down when warm-up ends, so it never fires.
PLATEAU_WINDOW = 100
PLATEAU_T = -2.0
PLATEAU_PROGRESS = 0.25
PLATEAU_EVERY = 10  # a line fit over 100 points: not every step
_CENTRED = [i - (PLATEAU_WINDOW - 1) / 2 for i in range(PLATEAU_WINDOW)]
_SXX = math.fsum(c * c for c in _CENTRED)


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
        # least squares by its closed form, in plain Python: on 100 floats numpy's per-call cost
        # is most of the work, and right after a backward pass it is ~10x its warm cost
        losses = list(self.window)
        mean = math.fsum(losses) / len(losses)
        slope = math.fsum(c * (y - mean) for c, y in zip(_CENTRED, losses, strict=True)) / _SXX
        squares = math.fsum(
            (y - mean - slope * c) ** 2 for c, y in zip(_CENTRED, losses, strict=True)
        )
        error = math.sqrt(squares / (len(losses) - 2) / _SXX)
        t = slope / error if error > 0 else (0.0 if slope == 0 else math.copysign(math.inf, slope))
        start = math.fsum(self.start) / len(self.start)
        finite = [f for f in self.floors if math.isfinite(f)]
        floor = math.fsum(finite) / len(finite) if finite else math.nan
        progress = (start - mean) / (start - floor) if start > floor else 0.0
        if t < PLATEAU_T or progress >= PLATEAU_PROGRESS:
            return []
        self.fired = True
        lr = statistics.median(self.lrs)
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
                f"the loss has not fallen for {PLATEAU_WINDOW} steps ({mean:.4f}, "
                f"{progress:.0%} of the way from its start {start:.4f} to its floor) {why}",
                {
                    "steps": f"{record.step - PLATEAU_WINDOW + 1}-{record.step}",
                    "loss_mean": round(mean, 4),
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
