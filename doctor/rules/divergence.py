"""divergence: the loss rising far above its best, or one update replacing a module's weights."""

from __future__ import annotations

import math

from quad_doctor.findings import Finding, Severity, significant
from quad_doctor.rules.base import Rule, RunFacts, StepRecord

# Divergence of the loss: its EMA (beta 0.9) this far above the best EMA so far. Healthy spikes
# (1.6 -> 2.07 for one step) move the EMA by ~0.05.
SMOOTHING_BETA = 0.9
DIVERGED_ABOVE_BEST = 1.0
# Divergence of the weights: one step moving a module by this share of its own norm.
# Healthy AdamW at the default peak 1e-4: <= 2.5e-3 (gradient-flow's measurement); lr 0.05
# moves the fusion 1.24x; lr 30 replaces every module at step 0 (ratios in the hundreds).
UPDATE_RATIO_ERROR = 0.3
UPDATE_RATIO_CRITICAL = 1.0


class DivergenceRule(Rule):
    """The loss rising far above its best, or one update replacing a module's weights.

    What it checks:
        On measured steps, how far the update moved each module: |dw|/|w|; every step, the
        smoothed loss against the best it reached.

    Why it matters:
        A step that moves the weights by their own size throws away what they held. SupCon with
        normalised embeddings is bounded, so a too-high LR collapses the model instead of
        sending the loss to infinity: the weight ratio sees it at the step it happens.

    Example:
        `--set train.learning_rate=30 --set train.warmup_epochs=0`: step 0 moves the fusion by
        745x its norm (critical); healthy steps move modules by < 0.01.

    Fix:
        Lower train.learning_rate (`quad-doctor lr-range-test` measures one) and warm up to it.
    """

    name = "divergence"
    order = 90
    EXPLAINS = ("non-finite", "embedding-collapse", "loss-pinned", "plateau")

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.smoothed = 0.0
        self.seen = 0
        self.best = math.inf
        self.worst: Severity | None = None

    def after_update(self, record: StepRecord) -> list[Finding]:
        findings = []
        if record.update_ratio:
            findings += self._replaced(record)
        if math.isfinite(record.loss):
            self.seen += 1
            self.smoothed = SMOOTHING_BETA * self.smoothed + (1 - SMOOTHING_BETA) * record.loss
            ema = self.smoothed / (1 - SMOOTHING_BETA**self.seen)
            self.best = min(self.best, ema)
            if ema > self.best + DIVERGED_ABOVE_BEST:
                findings.append(
                    Finding(
                        self.name,
                        Severity.ERROR,
                        f"the loss diverged: {ema:.3f} (smoothed) at step {record.step}, "
                        f"{ema - self.best:.2f} above its best {self.best:.3f}",
                        {
                            "signal": "loss",
                            "step": record.step,
                            "lr": record.lr,
                            "smoothed_loss": significant(ema),
                            "best_smoothed_loss": significant(self.best),
                        },
                        "Lower train.learning_rate or lengthen train.warmup_epochs; "
                        "`quad-doctor lr-range-test` shows where the loss starts to climb.",
                        explains=self.EXPLAINS,
                    )
                )
        fired = [f for f in findings if self.worst is None or f.severity > self.worst]
        if fired:
            self.worst = max(f.severity for f in fired)
        return fired[:1]

    def _replaced(self, record: StepRecord) -> list[Finding]:
        assert record.update_ratio is not None
        module, ratio = max(record.update_ratio.items(), key=lambda item: item[1])
        if not ratio > UPDATE_RATIO_ERROR:
            return []
        severity = Severity.CRITICAL if ratio > UPDATE_RATIO_CRITICAL else Severity.ERROR
        verb = "replaced" if severity is Severity.CRITICAL else "moved"
        return [
            Finding(
                self.name,
                severity,
                f"step {record.step} at lr {record.lr:.3g} {verb} the weights of {module}: "
                f"|dw|/|w| = {ratio:.3g} (healthy steps move them by < 0.01)",
                {
                    "signal": "update",
                    "step": record.step,
                    "lr": record.lr,
                    "update_to_weight_ratio": {
                        m: significant(r) for m, r in record.update_ratio.items()
                    },
                },
                "Lower train.learning_rate (`quad-doctor lr-range-test` measures where the loss "
                "stops falling) and warm up to it over train.warmup_epochs.",
                explains=self.EXPLAINS,
            )
        ]
