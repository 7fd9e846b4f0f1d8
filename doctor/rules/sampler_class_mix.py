"""sampler-class-mix, live: the class mix of the batches training draws."""

from __future__ import annotations

from collections import deque

import numpy as np

from quad_doctor.checks.sampler_class_mix import class_mix_finding, class_mix_verdict
from quad_doctor.context import distributed_batches
from quad_doctor.findings import Finding
from quad_doctor.rules.base import BatchWindowRule, RunFacts, StepRecord
from quad_doctor.trainer.losses import positives_per_anchor, supcon_collapse_value


class ClassMixRule(BatchWindowRule):
    """Each batch's class mix, from its labels: single-class batches, anchors without positives.

    What it checks:
        The labels of every batch training draws: over the last 50 batches (an epoch's, when an
        epoch is shorter), once 8 are in, the share of single-class batches and of anchors with
        no positive, with the pre-flight check's thresholds, words and remedy. With several
        ranks it judges the batches SupCon sees: every rank's batch of a step together with
        `dist.gather_features`, each rank's alone without. A finding is reported again only
        when it gets worse.

    How it differs from the pre-flight check:
        `quad-doctor diagnose` iterates the sampler for one epoch before training starts; this
        rule sees the batches training really draws, every epoch, and names the steps they came
        from. See `quad-doctor explain sampler-class-mix` for the check.

    Why it matters:
        A single-class batch holds SupCon at ln(B-1) whatever the learning rate; caught in the
        first batches, it costs a few steps instead of the whole run.

    Example:
        `--set train.sampler=sequential`: critical at step 7, the run's first event: "88% of
        batches hold a single class" over steps 0-7, with loss-bounds ranked under it.

    Fix:
        As the check's: `train.sampler = "stratified"`; the finding carries that config patch.
    """

    name = "sampler-class-mix"
    order = 30

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.first_step: deque[int] = deque(maxlen=self.window)
        # per step: (single-class batches, anchors without a positive, anchors, batches) over
        # the batches SupCon saw (one; or one per rank when ranks do not gather), and the sums
        self.counts: deque[tuple[int, int, int, int]] = deque(maxlen=self.window)
        self.sums = np.zeros(4, dtype=np.int64)
        self.rank_batches: deque[list[np.ndarray]] = deque(maxlen=self.window)

    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        # a per-sample loss (cross-entropy) needs no positives: the pre-flight check judges it
        return facts.pair_based

    def after_update(self, record: StepRecord) -> list[Finding]:
        if len(self.counts) == self.window:
            self.sums -= self.counts[0]
        if record.rank_labels is None or self.facts.gather_features:
            counts = (
                int(record.classes == 1),
                int(np.count_nonzero(record.positives == 0)),
                len(record.positives),
                1,
            )
        else:  # each rank's SupCon sees its own batch only
            positives = [positives_per_anchor(b) for b in record.rank_labels]
            counts = (
                sum(int(np.count_nonzero(np.bincount(b)) == 1) for b in record.rank_labels),
                sum(int(np.count_nonzero(p == 0)) for p in positives),
                sum(len(p) for p in positives),
                len(positives),
            )
        self.counts.append(counts)
        self.sums += counts
        self.batches.append(record.labels)
        self.rank_batches.append(record.rank_labels or [record.labels])
        self.first_step.append(record.step)
        if len(self.batches) < self.min_steps or not self._worse_than_before():
            return []
        per_rank = [list(rank) for rank in zip(*self.rank_batches, strict=True)]
        batches, ranks = distributed_batches(per_rank, self.facts.gather_features)
        finding = class_mix_finding(
            batches,
            self.facts.config,
            self.facts.num_classes,
            steps=f"{self.first_step[0]}-{record.step}",
            **ranks,
            **({"sampler": self.facts.sampler or "unknown"} if self.facts.config is None else {}),
        )
        return self.worse(finding)

    def _worse_than_before(self) -> bool:
        """The cheap test run every step; the full finding is built only when it passes."""
        single, without, anchors, batches = self.sums
        size = len(self.batches[-1])
        verdict = class_mix_verdict(
            single / max(1, batches), without / max(1, anchors), size, supcon_collapse_value(size)
        )
        return verdict is not None and (self.worst is None or verdict[0] > self.worst)
