"""lr-schedule, live: the LR the optimizer applies against the one the schedule asks for."""

from __future__ import annotations

import math

from quad_doctor.findings import Finding, Severity
from quad_doctor.rules.base import Rule, RunFacts, StepRecord


class AppliedLRRule(Rule):
    """The LR the optimizer really applies against the one the schedule asks for.

    What it checks:
        Before every update, the learning rate each optimizer param group holds against the one
        the trainer's schedule gives for that step (to one part in a million). The first step where
        they differ is an error, reported once.

    How it differs from the pre-flight check:
        `quad-doctor diagnose` judges the schedule itself before training: its warm-up, peak and
        end against the size of the weights. This rule checks that training applies it, since
        another callback or a second scheduler can set the optimizer's LR behind the schedule's
        back. See `quad-doctor explain lr-schedule` for the check.

    Why it matters:
        The pre-flight verdict holds for the schedule, not for an LR something else sets: the
        run then trains at a rate nobody chose and no check judged.

    Example:
        A callback that halves every group's LR at each batch start: "step 0 applies lr 5e-08
        but the schedule asks for 1e-07" (error).

    Fix:
        Remove what else sets the learning rate, or express the schedule in `train.lr_scheduler`
        and its keys.
    """

    name = "lr-schedule"
    order = 60

    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        return facts.scheduled  # a user's loop: the optimizer's LR is the schedule

    def before_update(self, record: StepRecord) -> list[Finding]:
        wrong = [lr for lr in record.applied_lr if not math.isclose(lr, record.lr, rel_tol=1e-6)]
        if self.fired or not wrong:
            return []
        self.fired = True
        return [
            Finding(
                self.name,
                Severity.ERROR,
                f"step {record.step} applies lr {wrong[0]:.3g} but the schedule asks for "
                f"{record.lr:.3g}",
                {
                    "step": record.step,
                    "scheduled_lr": record.lr,
                    "applied_lr_per_group": record.applied_lr,
                },
                "Something besides the trainer's schedule sets the optimizer's learning rate "
                "(another callback or scheduler): remove it, or express the schedule in "
                "train.lr_scheduler and its keys.",
            )
        ]
