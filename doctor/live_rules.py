"""The live doctor's rules: what each training step shows, turned into findings.

`LiveDoctor` (doctor/live.py) measures every step into a `StepRecord` and hands it to each rule;
a rule keeps what it needs of the stream and returns the findings it makes now. Rules that
overlap a pre-flight check build that check's finding with the check's own function, so the live
report and `diagnose` say the same thing in the same words. Measured numbers below are from the
embedded default (batch 32, 37 steps per epoch) unless said otherwise.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from quad_doctor.checks.gradient_flow import (
    EXPLODING_GRAD_NORM,
    VANISHING_GRAD_RMS,
    VANISHING_RELATIVE,
)
from quad_doctor.checks.loss_bounds import NO_ROOM_CRITICAL, loss_bounds_finding
from quad_doctor.checks.sampler_class_mix import class_mix_finding, class_mix_verdict
from quad_doctor.context import distributed_batches
from quad_doctor.findings import Finding, Severity, significant
from quad_doctor.trainer.config import Config
from quad_doctor.trainer.losses import positives_per_anchor, supcon_collapse_value

# Batches the class-mix and loss-bounds rules judge together: the last 50, or fewer when an
# epoch is shorter. They speak once 8 batches are in: a single-class batch is impossible for the
# stratified sampler and, at batch 32 over 6 classes, about 1e-23 likely for the random one.
MIX_WINDOW = 50
MIX_MIN_STEPS = 8
# Pinned: the mean loss of the last 20 steps within 0.001 of ln(B-1), with a standard deviation
# under 0.0025. The sequential sampler sits at 3.4339-3.4350 from epoch 2 (sd ~5e-4); lr 30 at
# batch 16 at 2.7041-2.7100 around ln(15) = 2.7081 (sd 0.0013); a healthy warm-up hovers at
# 3.41-3.45 (sd ~0.01).
PINNED_WINDOW = 20
PINNED_TOLERANCE = 1e-3
PINNED_SPREAD = 2.5e-3
PINNED_NEAR = 0.02
# The batch floor must lie this far below ln(B-1) for "at the floor" to be a different finding.
FLOOR_BELOW_COLLAPSE = 0.05
# An LR below w * 1e-4 (w: the typical weight size) cannot move the weights visibly in 100 steps:
# the LR range test starts there for the same reason (lr_range.START_MOVE).
NEGLIGIBLE_MOVE = 1e-4
# Embedding collapse: spread = 1 - |mean of the normalised features|^2 over the batch (0 when
# every sample maps to one point). Untrained 0.067, healthy never below 0.043 over 30 epochs;
# sequential sampler 0.012 by step 80 and falling; lr 30 with no warm-up 0.0009 from step 1.
COLLAPSED_SPREAD = 0.005
COLLAPSED_STEPS = 5
# Divergence of the loss: its EMA (beta 0.9) this far above the best EMA so far. Healthy spikes
# (1.6 -> 2.07 for one step) move the EMA by ~0.05.
SMOOTHING_BETA = 0.9
DIVERGED_ABOVE_BEST = 1.0
# Divergence of the weights: one step moving a module by this share of its own norm.
# Healthy AdamW at the default peak 1e-4: <= 2.5e-3 (gradient-flow's measurement); lr 0.05
# moves the fusion 1.24x; lr 30 replaces every module at step 0 (ratios in the hundreds).
UPDATE_RATIO_ERROR = 0.3
UPDATE_RATIO_CRITICAL = 1.0
# Gradient norms must misbehave at this many measurements in a row (a single step can spike).
GRADIENT_STREAK = 3
# Plateau: no significant downward trend (slope t-statistic above -2) over 100 steps after
# warm-up, while the loss has fallen less than a quarter of the way from its start to its floor.
# Healthy default: 78 % of the way down when warm-up ends, so it never fires.
PLATEAU_WINDOW = 100
PLATEAU_T = -2.0
PLATEAU_PROGRESS = 0.25
PLATEAU_EVERY = 10  # a line fit over 100 points costs ~0.1 ms: not every step
# Sample ids and per-module numbers shown in the evidence.
SHOWN_IDS = 16


@dataclass(frozen=True)
class RunFacts:
    """What rules need to know about the run, fixed when training starts."""

    config: Config
    num_classes: int
    steps_per_epoch: int
    warmup_steps: int
    weight_scale: float  # the typical size of the trainable weights (context.weight_scale)
    modules: tuple[str, ...]  # `encoders.<modality>.backbone|head`, `fusion`

    @property
    def negligible_lr(self) -> float:
        """Below this LR the weights cannot visibly move (see NEGLIGIBLE_MOVE)."""
        return self.weight_scale * NEGLIGIBLE_MOVE


@dataclass
class GradientSummary:
    """One step's gradients, per module (measured every k steps)."""

    total_norm: float
    module_norm: dict[str, float]
    module_rms: dict[str, float]
    non_finite: list[str]  # modules with a NaN/Inf gradient


@dataclass
class StepRecord:
    """What the live doctor saw of one training step."""

    step: int
    epoch: int
    lr: float  # what the schedule asks for at this step
    applied_lr: list[float]  # what each optimizer param group holds just before the update
    loss: float
    labels: np.ndarray
    indices: np.ndarray  # the batch's dataset rows
    classes: int  # distinct labels in the batch
    positives: np.ndarray  # per anchor: other samples of its class in the batch
    floor: float  # SupCon's floor for the batch's labels (NaN with no positive pair)
    collapse: float  # ln(B-1) for the batch's size
    rank_labels: list[np.ndarray] | None = None  # distributed: every rank's batch labels
    non_finite_ranks: list[int] = field(default_factory=list)  # distributed: NaN/Inf loss there
    rank_grad_norms: list[float] | None = None  # distributed: each rank's own gradient norm
    sample_ids: list[str] = field(default_factory=list)  # filled when the step goes non-finite
    non_finite_inputs: dict[str, list[str]] = field(default_factory=dict)  # modality -> ids
    gradients: GradientSummary | None = None
    update_ratio: dict[str, float] | None = None  # module -> |dw|/|w|, measured steps only
    spread: float = math.nan  # set after the step, from the batch's features


class Rule:
    """One live rule: watches the steps and returns the findings it makes now.

    Rules named after a pre-flight check share its manual; the others' docstrings are theirs
    (What it checks / Why it matters / Example / Fix), as `quad-doctor explain NAME` prints.
    """

    name: ClassVar[str]  # the check slug its findings carry
    order: ClassVar[int]  # causal position, among the pre-flight checks' orders

    def __init__(self, facts: RunFacts) -> None:
        self.facts = facts
        self.fired = False  # most rules report once

    def before_update(self, record: StepRecord) -> list[Finding]:
        """Judge the step before the optimizer applies it (the doctor can still stop it)."""
        return []

    def after_update(self, record: StepRecord) -> list[Finding]:
        """Judge the finished step."""
        return []


class BatchWindowRule(Rule):
    """A rule that judges the labels of the last batches together, as a pre-flight check does an
    epoch's; it reports a finding again only when it gets worse."""

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.window = min(MIX_WINDOW, facts.steps_per_epoch)
        self.min_steps = min(MIX_MIN_STEPS, self.window)
        self.batches: deque[np.ndarray] = deque(maxlen=self.window)
        self.worst: Severity | None = None

    def worse(self, finding: Finding | None) -> list[Finding]:
        """`[finding]` when it is worse than anything this rule reported before, else `[]`."""
        if finding is None or (self.worst is not None and finding.severity <= self.worst):
            return []
        self.worst = finding.severity
        return [finding]


class ClassMixRule(BatchWindowRule):
    """Each batch's class mix, from its labels: single-class batches, anchors without positives."""

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

    def after_update(self, record: StepRecord) -> list[Finding]:
        if len(self.counts) == self.window:
            self.sums -= self.counts[0]
        if record.rank_labels is None or self.facts.config.dist.gather_features:
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
        batches, ranks = distributed_batches(per_rank, self.facts.config.dist.gather_features)
        finding = class_mix_finding(
            batches,
            self.facts.config,
            self.facts.num_classes,
            steps=f"{self.first_step[0]}-{record.step}",
            **ranks,
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


class LossBoundsRule(BatchWindowRule):
    """The SupCon bounds of the batches training sees: no room between the floor and ln(B-1)."""

    name = "loss-bounds"
    order = 40

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.stuck: deque[bool] = deque(maxlen=self.window)
        self.stuck_count = 0

    def after_update(self, record: StepRecord) -> list[Finding]:
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


class AppliedLRRule(Rule):
    """The LR the optimizer really applies against the one the schedule asks for."""

    name = "lr-schedule"
    order = 60

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


class NonFiniteRule(Rule):
    """NaN/Inf in the loss or the gradients, caught before the optimizer applies the step.

    What it checks:
        Every step's loss, and every measured step's gradient norms, for NaN or Inf; when one
        shows up, which samples of the batch hold NaN/Inf inputs.

    Why it matters:
        One update on a NaN loss makes the weights NaN for good; every later step is wasted.

    Example:
        `--set data.synthetic.nan_fraction=0.01 --stop-on critical`: stopped at step 0 before
        the update, with the sensor sample named.

    Fix:
        Repair the samples named (data-integrity), or lower the LR if the inputs were finite.
    """

    name = "non-finite"
    order = 91

    def before_update(self, record: StepRecord) -> list[Finding]:
        bad_modules = record.gradients.non_finite if record.gradients else []
        ranks = record.non_finite_ranks
        if self.fired or (math.isfinite(record.loss) and not bad_modules and not ranks):
            return []
        self.fired = True
        evidence = {
            "step": record.step,
            "epoch": record.epoch,
            "lr": record.lr,
            "loss": record.loss if math.isfinite(record.loss) else str(record.loss),
            "modules_with_non_finite_gradients": bad_modules,
            "batch_sample_ids": record.sample_ids[:SHOWN_IDS],
            "non_finite_inputs": record.non_finite_inputs,
        }
        what = "loss" if not math.isfinite(record.loss) or ranks else "gradient"
        where = ""
        if ranks:
            evidence["ranks_with_non_finite_loss"] = ranks
            where = f" on rank {', '.join(map(str, ranks))}"
        findings = [
            Finding(
                self.name,
                Severity.CRITICAL,
                f"the {what} is {'NaN/Inf' if what == 'gradient' or ranks else record.loss}"
                f"{where} at step {record.step} (lr {record.lr:.3g}): one update on it makes the "
                "weights NaN",
                evidence,
                "If the batch's inputs are finite (see the evidence), the step blew up: lower "
                "train.learning_rate (`quad-doctor lr-range-test` measures a safe one) and keep "
                "model.fusion.l2_normalize on; otherwise repair the samples named.",
            )
        ]
        if record.non_finite_inputs:
            where = ", ".join(f"{m} {len(ids)}" for m, ids in record.non_finite_inputs.items())
            findings.append(
                Finding(
                    "data-integrity",
                    Severity.CRITICAL,
                    f"the batch of step {record.step} holds samples with NaN or Inf ({where}): "
                    "each poisons its batches, then the weights",
                    {
                        "step": record.step,
                        **{
                            f"{modality}_sample_ids": ids[:SHOWN_IDS]
                            for modality, ids in record.non_finite_inputs.items()
                        },
                    },
                    "Drop or repair these samples and re-export the arrays; `quad-doctor "
                    "diagnose` lists every one of them before training.",
                    explains=("non-finite", "divergence"),
                )
            )
        return findings


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


class GradientRule(Rule):
    """Gradient norms every k steps: exploding, vanishing, a modality that gets almost none."""

    name = "gradient-flow"
    order = 80

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.streaks: dict[str, int] = {}
        self.fired_signals: set[str] = set()

    def before_update(self, record: StepRecord) -> list[Finding]:
        grads = record.gradients
        if grads is None or grads.non_finite:
            return []  # non-finite gradients are the non-finite rule's
        encoders = self._modality_norms(grads)
        largest = max(encoders.values(), default=0.0)
        signals = {
            "exploding": grads.total_norm > EXPLODING_GRAD_NORM,
            "vanishing": min(grads.module_rms.values(), default=1.0) < VANISHING_GRAD_RMS,
            "modality": largest > 0 and min(encoders.values()) < VANISHING_RELATIVE * largest,
        }
        findings = []
        for signal, on in signals.items():
            self.streaks[signal] = self.streaks.get(signal, 0) + 1 if on else 0
            if self.streaks[signal] >= GRADIENT_STREAK and signal not in self.fired_signals:
                self.fired_signals.add(signal)
                findings.append(self._finding(signal, record, grads, encoders))
        return findings

    def after_update(self, record: StepRecord) -> list[Finding]:
        """Distributed: each rank's own gradient norm, measured before DDP averaged them."""
        norms = record.rank_grad_norms
        if not norms or not all(math.isfinite(n) for n in norms):
            return []  # measured every 16th step only
        largest = max(norms)
        signals = {
            "rank-exploding": [r for r, n in enumerate(norms) if n > EXPLODING_GRAD_NORM],
            "rank-starved": [r for r, n in enumerate(norms) if n < VANISHING_RELATIVE * largest],
        }
        findings = []
        for signal, ranks in signals.items():
            self.streaks[signal] = self.streaks.get(signal, 0) + 1 if ranks else 0
            if self.streaks[signal] >= GRADIENT_STREAK and signal not in self.fired_signals:
                self.fired_signals.add(signal)
                findings.append(self._rank_finding(signal, ranks, record, norms))
        return findings

    def _rank_finding(
        self, signal: str, ranks: list[int], record: StepRecord, norms: list[float]
    ) -> Finding:
        where = ", ".join(map(str, ranks))
        evidence = {
            "signal": signal,
            "step": record.step,
            "ranks": ranks,
            "grad_norm_per_rank": [significant(n) for n in norms],
            "steps_in_a_row": GRADIENT_STREAK,
        }
        if signal == "rank-exploding":
            return Finding(
                self.name,
                Severity.ERROR,
                f"rank {where}: its own gradient norm {max(norms):.3g} explodes at step "
                f"{record.step} (healthy 0.3-30), before DDP averages it with the others'",
                evidence,
                "Lower train.learning_rate; look at what that rank's batches hold.",
                explains=("divergence", "non-finite"),
            )
        return Finding(
            self.name,
            Severity.WARNING,
            f"rank {where}: its own gradient is {min(norms) / max(norms):.1e} of the largest "
            f"rank's at step {record.step}: its batches teach the model almost nothing",
            evidence,
            "Check that rank's batches (see sampler-class-mix's per-rank evidence); with "
            "dist.gather_features = false a rank whose batches hold one class contributes no "
            "gradient.",
        )

    def _modality_norms(self, grads: GradientSummary) -> dict[str, float]:
        norms: dict[str, float] = {}
        for module, norm in grads.module_norm.items():
            parts = module.split(".")
            if parts[0] == "encoders":
                norms[parts[1]] = math.hypot(norms.get(parts[1], 0.0), norm)
        return norms

    def _finding(
        self,
        signal: str,
        record: StepRecord,
        grads: GradientSummary,
        encoders: dict[str, float],
    ) -> Finding:
        evidence = {
            "signal": signal,
            "step": record.step,
            "lr": record.lr,
            "measurements_in_a_row": GRADIENT_STREAK,
            "global_grad_norm": significant(grads.total_norm),
            "grad_norm_per_module": {m: significant(v) for m, v in grads.module_norm.items()},
            "grad_norm_per_modality": {m: significant(v) for m, v in encoders.items()},
        }
        if signal == "exploding":
            title = (
                f"gradients explode: global norm {grads.total_norm:.3g} at step {record.step} "
                f"(healthy 0.3-30)"
            )
            remedy = "Lower train.learning_rate and keep model.fusion.l2_normalize on."
            explains: tuple[str, ...] = ("divergence", "non-finite")
        elif signal == "vanishing":
            module = min(grads.module_rms, key=grads.module_rms.__getitem__)
            title = (
                f"gradients vanish: {module} gets {grads.module_rms[module]:.2g} per weight "
                f"(Adam's eps is 1e-8)"
            )
            remedy = "Keep the fusion wide (model.fusion.dim) and its LayerNorm and L2 norm on."
            explains = ("plateau", "loss-pinned")
        else:
            modality = min(encoders, key=encoders.__getitem__)
            title = (
                f"the {modality} encoder gets almost no gradient: "
                f"{encoders[modality] / max(encoders.values()):.1e} of the largest encoder's"
            )
            remedy = (
                f"Check that the {modality} encoder's output reaches the fusion (a detach, a zero "
                "scale or a frozen layer) and that its stream carries signal."
            )
            explains = ()
        return Finding(self.name, Severity.ERROR, title, evidence, remedy, explains=explains)


class EmbeddingCollapseRule(Rule):
    """The spread of the normalised features across the batch going to zero.

    What it checks:
        1 - |mean of the normalised features|^2 over each batch (0 when every sample maps to the
        same point), below 0.005 for 5 steps in a row.

    Why it matters:
        Collapsed embeddings give every anchor the loss ln(B-1) and separate nothing.

    Example:
        lr 30 without warm-up: spread 0.0009 from step 1; untrained 0.067, healthy >= 0.043.

    Fix:
        Fix the cause above it (single-class batches, an LR that replaced the weights).
    """

    name = "embedding-collapse"
    order = 92

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.low = 0

    def after_update(self, record: StepRecord) -> list[Finding]:
        self.low = self.low + 1 if record.spread < COLLAPSED_SPREAD else 0
        if self.fired or self.low < COLLAPSED_STEPS:
            return []
        self.fired = True
        return [
            Finding(
                self.name,
                Severity.ERROR,
                f"the embeddings collapsed: spread {record.spread:.2g} across the batch at step "
                f"{record.step} (untrained about 0.07; 0 = every sample on one point)",
                {
                    "step": record.step,
                    "lr": record.lr,
                    "spread": significant(record.spread),
                    "steps_below_threshold": self.low,
                    "threshold": COLLAPSED_SPREAD,
                },
                "Collapse follows single-class batches or an LR that replaces the weights "
                "(see the findings above it); with neither, raise train.temperature.",
                explains=("loss-pinned", "plateau"),
            )
        ]


class LossPinnedRule(Rule):
    """The loss sitting at ln(B-1), or at its batches' floor, while the LR is not negligible.

    What it checks:
        The last 20 losses: mean within 0.001 of ln(B-1) with a standard deviation under 0.0025,
        at learning rates that can move the weights (above w * 1e-4, w the typical weight size).

    Why it matters:
        ln(B-1) is the loss of collapsed embeddings and the floor of single-class batches: the
        original failure sat at 3.4340 = ln(31) for days at every learning rate.

    Example:
        `--set train.sampler=sequential`: pinned at 3.4350 over steps 21-40.

    Fix:
        Mix classes in every batch (sampler-class-mix); no learning rate moves a loss at its floor.
    """

    name = "loss-pinned"
    order = 93

    def __init__(self, facts: RunFacts) -> None:
        super().__init__(facts)
        self.window: deque[StepRecord] = deque(maxlen=PINNED_WINDOW)
        self.fired_signals: set[str] = set()
        self.near = 0  # steps in a row with the loss near ln(B-1) or the batch floor

    def after_update(self, record: StepRecord) -> list[Finding]:
        self.window.append(record)
        # A loss this far off cannot sit in a window with sd < PINNED_SPREAD: 20 values with one
        # at distance d from their mean have sd >= 0.22 d. Skips the statistics on healthy steps.
        near = min(abs(record.loss - record.collapse), abs(record.loss - record.floor))
        self.near = self.near + 1 if near < PINNED_NEAR else 0
        if self.near < PINNED_WINDOW:
            return []
        if min(r.lr for r in self.window) < self.facts.negligible_lr:
            return []  # too small an LR explains a still loss; the plateau rule says so
        losses = np.array([r.loss for r in self.window])
        if not losses.std() < PINNED_SPREAD:
            return []
        collapse = np.array([r.collapse for r in self.window])
        floor = np.array([r.floor for r in self.window])
        at_collapse = abs(float(np.mean(losses - collapse))) < PINNED_TOLERANCE
        at_floor = abs(float(np.mean(losses - floor))) < PINNED_TOLERANCE and bool(
            np.all(floor < collapse - FLOOR_BELOW_COLLAPSE)
        )
        signal = "collapse" if at_collapse else "floor" if at_floor else None
        if signal is None or signal in self.fired_signals:
            return []
        self.fired_signals.add(signal)
        evidence = {
            "signal": signal,
            "steps": f"{self.window[0].step}-{record.step}",
            "loss_mean": round(float(losses.mean()), 4),
            "loss_min": round(float(losses.min()), 4),
            "loss_max": round(float(losses.max()), 4),
            "collapse_value_ln_b_minus_1": round(record.collapse, 4),
            "batch_floor": round(record.floor, 4),
            "lr_range": [min(r.lr for r in self.window), max(r.lr for r in self.window)],
        }
        batch = len(record.labels)
        if signal == "collapse":
            return [
                Finding(
                    self.name,
                    Severity.CRITICAL,
                    f"the loss is pinned at ln(B-1) = ln({batch - 1}) = {record.collapse:.4f}: "
                    f"{losses.mean():.4f} over steps {evidence['steps']} at lr up to "
                    f"{evidence['lr_range'][1]:.2g}",
                    evidence,
                    "ln(B-1) is the loss of collapsed embeddings and the floor of a single-class "
                    "batch: fix the batches' class mix (sampler-class-mix) or an LR that "
                    "collapsed the model; no other LR will move it.",
                    explains=("plateau",),
                )
            ]
        return [
            Finding(
                self.name,
                Severity.WARNING,
                f"the loss sits at its batches' floor {record.floor:.4f} over steps "
                f"{evidence['steps']}: nothing is left to learn on these batches",
                evidence,
                "More classes per batch (or a larger batch) give SupCon negatives to learn from.",
                explains=("plateau",),
            )
        ]


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


def live_only_rule(name: str) -> type[Rule] | None:
    """The live rule called `name` that has no pre-flight check of its own, if there is one."""
    return next((rule for rule in LIVE_ONLY if rule.name == name), None)


LIVE_RULES: tuple[type[Rule], ...] = (
    ClassMixRule,
    LossBoundsRule,
    AppliedLRRule,
    GradientRule,
    DivergenceRule,
    NonFiniteRule,
    EmbeddingCollapseRule,
    LossPinnedRule,
    PlateauRule,
)
# The rules with no pre-flight check of the same name: their docstrings are their manuals.
LIVE_ONLY = (DivergenceRule, NonFiniteRule, EmbeddingCollapseRule, LossPinnedRule, PlateauRule)
