"""sampler-class-mix: the class mix of every batch the trainer's sampler will really yield."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DataLoader

from quad_doctor.checks.base import Check
from quad_doctor.context import DiagnosisContext, typical_length
from quad_doctor.findings import Finding, Severity
from quad_doctor.trainer.config import Config
from quad_doctor.trainer.losses import positives_per_anchor, supcon_collapse_value
from quad_doctor.trainer.samplers import StratifiedBatchSampler

# Past half single-class batches, most steps carry no contrastive signal at all.
SINGLE_CLASS_CRITICAL = 0.5
# Anchors without a positive contribute nothing; a quarter of them wastes a quarter of the batch.
NO_POSITIVE_ERROR = 0.25
NO_POSITIVE_WARNING = 0.05
# How many leading batches to show label counts for, as the original debugging session did.
SHOWN_BATCHES = 3
# How many leading batches the HTML report draws as stacked label counts.
PICTURED_BATCHES = 24
# Anchors without a positive make a SupCon that averages over anchors NaN on batches with none,
# and starve the rest: what the LR sweep and the gradient probe then see is their symptom.
NO_POSITIVE_EXPLAINS = ("lr-range-test", "gradient-flow")
# What a sampler that leaves SupCon nothing to learn explains, before and during training.
CRITICAL_EXPLAINS = ("loss-bounds", "lr-range-test", "embedding-collapse", "loss-pinned", "plateau")


def batch_label_line(index: int, labels: np.ndarray) -> str:
    """`Batch 0 labels - unique: [0], counts: [32]`, as a person would print it."""
    unique, counts = np.unique(labels, return_counts=True)
    return f"Batch {index} labels - unique: {unique.tolist()}, counts: {counts.tolist()}"


class SamplerClassMix(Check):
    """The class mix of the batches the trainer's sampler yields over a whole epoch.

    What it checks:
        Iterates the sampler the trainer will use (`train.sampler`, indices only; labels from
        the manifest) for a full epoch: classes per batch, the share of single-class batches,
        positives per anchor, and anchors with no positive at all. With `dist.nproc_per_node`
        = N > 1 it simulates every rank's sampler in this one process and judges the batches
        SupCon will see: all ranks' batches of a step together with `dist.gather_features`, each
        rank's alone without; the evidence names the ranks with single-class batches and gives
        positives per anchor with and without gathering.

    Why it matters:
        SupCon pulls an anchor towards its positives and away from the rest of the batch. In a
        single-class batch every other sample is a positive, nothing is pushed away, and the loss
        cannot go below ln(B-1) (3.4340 for batch 32) — the loss of fully collapsed embeddings.
        No learning rate changes that.

    Example:
        `--set train.sampler=sequential` on class-grouped data:
        `Batch 0 labels - unique: [0], counts: [32]`, every batch one class, loss stuck at 3.4340.

    Fix:
        Use `train.sampler = "stratified"` (your own code: `quad_doctor.StratifiedBatchSampler`),
        which puts every class in every batch with at least two samples each; when classes
        outnumber half the batch, it deals P classes x 2 samples per batch so every anchor still
        has a positive.
    """

    name = "sampler-class-mix"
    phase = "data"
    order = 30

    def run(self, ctx: DiagnosisContext) -> Iterator[Finding]:
        labels = ctx.labels
        classes = int(np.count_nonzero(np.bincount(labels[ctx.train_indices])))
        batches, ranks = ctx.contrast_batches()
        sampler = ctx.config.train.sampler if ctx.config is not None else sampler_name(ctx)
        # for the report's pictures: classes per batch over the epoch, the first batches' mix
        width = len(ctx.class_names)
        ctx.published["sampler_batches"] = {
            "sampler": sampler,
            "classes_per_batch": [len(np.unique(b)) for b in batches],
            "first_batches": [
                np.bincount(b, minlength=width).tolist() for b in batches[:PICTURED_BATCHES]
            ],
        }
        if ctx.config is None and not ctx.pair_based:
            finding = per_sample_mix_finding(batches, ctx)
        else:
            finding = class_mix_finding(
                batches, ctx.config, classes, user=None if ctx.config else ctx, **ranks
            )
        if finding is not None:
            yield finding


def sampler_name(ctx: DiagnosisContext) -> str:
    """The user's batch sampler's class, as a person names it."""
    return ctx.sampler_class.__name__


def class_mix_finding(
    batches: list[np.ndarray],
    config: Config | None,
    num_classes: int,
    user: DiagnosisContext | None = None,
    **evidence: object,
) -> Finding | None:
    """The sampler-class-mix finding for these batches' labels, or None when their mix is fine.

    Shared by the pre-flight check (a whole epoch of the sampler) and the live doctor (the
    batches training really saw); `evidence` adds where the batches came from. The remedy is a
    config patch for the embedded trainer (`config`), a verified code change for a user's setup
    (`user`, its context).
    """
    classes_per_batch = np.array([len(np.unique(b)) for b in batches])
    positives = np.concatenate([positives_per_anchor(b) for b in batches])
    single_class_share = float(np.mean(classes_per_batch == 1))
    no_positive_share = float(np.mean(positives == 0))
    # what SupCon contrasts (all ranks' batches when it gathers them): the most common length,
    # not a leftover batch
    size = typical_length(batches)
    collapse = supcon_collapse_value(size)
    verdict = class_mix_verdict(single_class_share, no_positive_share, size, collapse)
    if verdict is None:
        return None
    severity, title = verdict
    ranks = evidence.get("ranks_with_single_class_batches")
    if ranks and single_class_share > 0:
        where = "gathered over all ranks" if evidence.get("gather_features") else "on each rank"
        title = f"ranks {', '.join(map(str, ranks))}: {title} ({where})"
    batch_size = config.train.batch_size if config is not None else size
    patch: dict[str, object] = {}
    code = ""
    setup_patch = None
    if config is not None:
        patch, remedy = _remedy(config, num_classes)
    else:
        remedy, code, setup_patch = _user_remedy(user, batch_size)
    return Finding(
        check=SamplerClassMix.name,
        severity=severity,
        title=title,
        evidence={
            "sampler": (
                config.train.sampler
                if config is not None
                else sampler_name(user)
                if user is not None
                else evidence.pop("sampler", "unknown")
            ),
            "batches": len(batches),
            "batch_size": batch_size,
            **evidence,
            "first_batches": [
                batch_label_line(i, b) for i, b in enumerate(batches[:SHOWN_BATCHES])
            ],
            "single_class_batch_fraction": round(single_class_share, 4),
            "classes_per_batch_mean": round(float(classes_per_batch.mean()), 3),
            "classes_per_batch_min": int(classes_per_batch.min()),
            "positives_per_anchor_mean": round(float(positives.mean()), 3),
            "anchors_without_positive_fraction": round(no_positive_share, 4),
            # the floor of a single-class batch, and the loss of collapsed embeddings
            "collapse_value_ln_b_minus_1": round(collapse, 4),
        },
        remedy=remedy,
        config_patch=patch,
        # Only a sampler that leaves SupCon nothing to learn explains a flat loss and LR curve
        # (and, live, the collapsed embeddings and the loss pinned at ln(B-1)).
        explains=(
            CRITICAL_EXPLAINS
            if severity is Severity.CRITICAL
            else NO_POSITIVE_EXPLAINS
            if severity is Severity.ERROR
            else ()
        ),
        code_change=code,
        setup_patch=setup_patch,
    )


def per_sample_mix_finding(batches: list[np.ndarray], ctx: DiagnosisContext) -> Finding | None:
    """For a per-sample loss (cross-entropy): positives do not matter, but a batch of one class
    pulls every update towards that class."""
    single_class_share = float(np.mean([len(np.unique(b)) == 1 for b in batches]))
    if single_class_share <= SINGLE_CLASS_CRITICAL:
        return None
    remedy, code, setup_patch = _user_remedy(ctx, ctx.batch_size)
    return Finding(
        check=SamplerClassMix.name,
        severity=Severity.ERROR,
        title=f"{single_class_share:.0%} of batches hold a single class: every update pulls the "
        "model towards whichever class the batch holds",
        evidence={
            "sampler": sampler_name(ctx),
            "batches": len(batches),
            "batch_size": ctx.batch_size,
            "loss": "per-sample (measured: a batch of distinct classes leaves it room to fall)",
            "first_batches": [
                batch_label_line(i, b) for i, b in enumerate(batches[:SHOWN_BATCHES])
            ],
            "single_class_batch_fraction": round(single_class_share, 4),
        },
        remedy=remedy,
        code_change=code,
        setup_patch=setup_patch,
    )


def class_mix_verdict(
    single_class_share: float, no_positive_share: float, batch_size: int, collapse: float
) -> tuple[Severity, str] | None:
    """Severity and title for these shares of single-class batches and positive-less anchors."""
    if single_class_share > SINGLE_CLASS_CRITICAL:
        return Severity.CRITICAL, (
            f"{single_class_share:.0%} of batches hold a single class: SupCon cannot go "
            f"below ln(B-1) = ln({batch_size - 1}) = {collapse:.4f}"
        )
    if no_positive_share == 1.0:
        return (
            Severity.CRITICAL,
            "no anchor has a positive in its batch: SupCon has nothing to learn from",
        )
    title = f"{no_positive_share:.0%} of anchors have no positive in their batch"
    if no_positive_share > NO_POSITIVE_ERROR:
        return Severity.ERROR, title
    if no_positive_share > NO_POSITIVE_WARNING:
        return Severity.WARNING, title
    return None


def _remedy(config: Config, num_classes: int) -> tuple[dict[str, object], str]:
    train = config.train
    if train.sampler == "stratified":
        return {}, (
            "The stratified sampler already gives every anchor a positive where the batch "
            "allows; look at the labels (dataset-imbalance)."
        )
    remedy = "Use the stratified sampler: every batch then holds every class, two or more each"
    if train.batch_size < 2 * num_classes:
        remedy += (
            f" (at batch {train.batch_size}, {train.batch_size // 2} classes of the "
            f"{num_classes}, two samples each)"
        )
    return {"train.sampler": "stratified"}, remedy + "."


def _user_remedy(ctx: DiagnosisContext | None, batch_size: int):
    """The code change for a user's sampler, and how to apply it to a copy of their setup (none
    when the live doctor watches a loop it did not build: nothing to copy)."""
    size = batch_size
    code = (
        "train_loader = DataLoader(dataset, batch_sampler=quad_doctor.StratifiedBatchSampler("
        f"labels, batch_size={size}), ...)"
    )
    remedy = (
        "Give every batch several classes: quad_doctor.StratifiedBatchSampler puts every class "
        "in every batch with two or more samples each (P classes x 2 samples when classes "
        "outnumber half the batch), deterministic per epoch and distributed-aware."
    )
    if ctx is None:
        return remedy, code, None
    indices = ctx.train_indices
    seed = ctx.seed

    def apply(setup):
        loader = setup.train_loader
        sampler = StratifiedBatchSampler(
            ctx.labels, batch_size=size, indices=indices, seed=seed, num_replicas=1, rank=0
        )
        return setup.replace(
            train_loader=DataLoader(
                loader.dataset, batch_sampler=sampler, collate_fn=loader.collate_fn
            )
        )

    return remedy, code, apply
