"""loss-bounds, live: the room between floor and collapse value on the batches training draws."""

from __future__ import annotations

from collections import deque

from quad_doctor.checks.loss_bounds import NO_ROOM_CRITICAL, loss_bounds_finding
from quad_doctor.findings import Finding, Severity, significant
from quad_doctor.rules.base import BatchWindowRule, RunFacts, StepRecord


class LossBoundsRule(BatchWindowRule):
    """The SupCon bounds of the batches training sees: no room between the floor and ln(B-1).

    What it checks:
        For every batch training draws, the collapse value and floor probed from the trainer's
        own loss as the pre-flight check probes them (once per new mix of class sizes, then
        cached). Once 8 of the last 50 batches (an epoch's, when shorter) are in and more than
        half of them have under 0.05 between floor and collapse value, or no positive pair at
        all, it reports the check's finding with the loss training is at (`loss_now`); again
        only when it gets worse.

    How it differs from the pre-flight check:
        `quad-doctor diagnose` probes the first epoch's batches (at most 64) before training and
        runs the untrained model on a few of them; this rule judges the batches as they come,
        the whole run long, beside the loss they give. See `quad-doctor explain loss-bounds`.

    Why it matters:
        A loss at its floor cannot move at any learning rate: the live report says so from the
        first steps, long before loss-pinned can see the loss sit still.

    Example:
        `--set train.sampler=sequential`: critical at step 7, "the loss cannot move in 88% of
        batches: their floor 3.4340 is the collapse value ln(B-1) = ln(31) = 3.4340" with the
        loss at 3.46; ranked under sampler-class-mix, which explains it.

    Fix:
        Give every batch several classes (sampler-class-mix).
    """

    name = "loss-bounds"
    order = 40

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.stuck: deque[bool] = deque(maxlen=self.window)
        self.stuck_count = 0

    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        return facts.bounds

    def after_update(self, record: StepRecord) -> list[Finding]:
        if record.collapse != record.collapse:
            return []  # not probed yet: no outputs seen
        self.batches.append(record.labels)
        room = record.collapse - record.floor
        if len(self.stuck) == self.window:
            self.stuck_count -= self.stuck[0]
        self.stuck.append(not room >= NO_ROOM_CRITICAL)  # NaN floor: no positives, no room
        self.stuck_count += self.stuck[-1]
        if len(self.batches) < self.min_steps or self.stuck_count / len(self.stuck) <= 0.5:
            return []
        if self.worst is Severity.CRITICAL:
            return []  # nothing worse to report
        finding = loss_bounds_finding(
            list(self.batches), len(record.labels), loss_now=significant(record.loss)
        )
        return self.worse(finding)
