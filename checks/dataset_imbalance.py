"""dataset-imbalance: label counts per split, from the manifest alone."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from quad_doctor.checks.base import Check
from quad_doctor.context import DiagnosisContext, class_counts
from quad_doctor.findings import Finding, Severity
from quad_doctor.trainer.samplers import StratifiedBatchSampler

# The original checklist's line: beyond 90 % one class, batches are nearly single-class anyway.
MAJORITY_SHARE_ERROR = 0.90
# Largest over smallest non-empty class; past 10:1 minority classes get few positives per batch.
IMBALANCE_RATIO_WARNING = 10.0
# A class needs two samples to form even one positive pair.
MIN_SAMPLES_FOR_A_PAIR = 2


class DatasetImbalance(Check):
    """Label counts per split: majority share, imbalance ratio, classes too small to pair.

    What it checks:
        Counts each class in the train and val splits from the labels alone (the manifest, or
        the setup's `labels`; never the inputs): the
        majority class's share, the ratio of the largest to the smallest class, classes with
        fewer than two training samples and classes with none.

    Why it matters:
        SupCon learns only from positive pairs. A class with one sample can never form one; when
        one class holds over 90 % of the data, no sampler can mix batches, so the loss sits near
        its collapse value whatever the learning rate.

    Example:
        `--set data.synthetic.class_weights=[100,1,1,1,1,1]`: 95 % of samples are "walking".

    Fix:
        Collect or synthesise more minority samples, drop classes that cannot be paired, or
        rebalance (the `stratified` sampler cycles rare classes so every batch still holds them).
    """

    name = "dataset-imbalance"
    phase = "data"
    order = 20

    def run(self, ctx: DiagnosisContext) -> Iterator[Finding]:
        classes = ctx.class_names
        train = np.bincount(ctx.labels[ctx.train_indices], minlength=len(classes))
        val = ctx.val_labels
        # published for the report's pictures
        ctx.published["class_counts"] = class_counts(ctx.labels[ctx.train_indices], val, classes)
        total = int(train.sum())
        majority = int(train.argmax())
        majority_share = float(train[majority] / total) if total else 0.0
        present = train[train > 0]
        ratio = float(present.max() / present.min()) if len(present) else float("inf")
        unpairable = [classes[c] for c in np.flatnonzero((train > 0) & (train < 2))]
        missing = [classes[c] for c in np.flatnonzero(train == 0)]
        evidence = {
            "train_counts": {classes[c]: int(n) for c, n in enumerate(train)},
            **(
                {
                    "val_counts": dict(
                        zip(classes, np.bincount(val, minlength=len(classes)).tolist(), strict=True)
                    )
                }
                if val is not None
                else {}
            ),
            "majority_class": classes[majority],
            "majority_share": round(majority_share, 4),
            "imbalance_ratio": round(ratio, 2),
            "classes_without_pairs": unpairable,
            "classes_missing": missing,
        }

        # Data the generator made imbalanced on purpose is fixed by its own knob; a dataset on
        # disk has no config key that rebalances it.
        config = ctx.config
        synthetic = (
            config is not None and not config.data.path and config.data.synthetic.class_weights
        )
        rebalance = {"data.synthetic.class_weights": []} if synthetic else {}
        stratified = (
            config.train.sampler == "stratified"
            if config is not None
            # the class, not its name: the original team's own sampler had the same name
            else issubclass(ctx.sampler_class, StratifiedBatchSampler)
        )

        def finding(
            severity: Severity, title: str, remedy: str, explains=(), patch=None
        ) -> Finding:
            return Finding(
                self.name, severity, title, evidence, remedy, patch or {}, explains=explains
            )

        if majority_share > MAJORITY_SHARE_ERROR:
            if stratified:
                consequence = "the stratified sampler must repeat the other classes' few samples"
            else:
                consequence = "batches are nearly single-class"
            yield finding(
                Severity.ERROR,
                f"'{classes[majority]}' holds {majority_share:.0%} of the training data: "
                + consequence,
                "Rebalance the data: collect or synthesise minority samples.",
                explains=("sampler-class-mix", "loss-bounds", "lr-range-test"),
                patch=rebalance,
            )
        elif ratio > IMBALANCE_RATIO_WARNING:
            yield finding(
                Severity.WARNING,
                f"classes are imbalanced {ratio:.0f}:1 in the training split",
                "Use a stratified sampler (quad_doctor.StratifiedBatchSampler, or train.sampler = "
                '"stratified"), so every batch still holds every class.',
            )
        if unpairable:
            yield finding(
                Severity.ERROR,
                f"{len(unpairable)} class(es) have one training sample: no positive pair",
                "Add samples to these classes or drop them from the label set.",
                patch=rebalance,
            )
        if missing:
            yield finding(
                Severity.WARNING,
                f"{len(missing)} class(es) have no training samples",
                "Check the labels and the split; an absent class cannot be learned.",
            )
