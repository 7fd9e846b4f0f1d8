"""What every live rule is and what it is handed: the run's facts, one step's record."""

from __future__ import annotations

import inspect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from quad_doctor.findings import Finding, Severity
from quad_doctor.trainer.config import Config

# Batches the class-mix and loss-bounds rules judge together: the last 50, or fewer when an
# epoch is shorter. They speak once 8 batches are in: a single-class batch is impossible for the
# stratified sampler and, at batch 32 over 6 classes, about 1e-23 likely for the random one.
MIX_WINDOW = 50
MIX_MIN_STEPS = 8
# An LR below w * 1e-4 (w: the typical weight size) cannot move the weights visibly in 100 steps:
# the LR range test starts there for the same reason (lr_range.START_MOVE).
NEGLIGIBLE_MOVE = 1e-4


@dataclass(frozen=True)
class RunFacts:
    """What rules need to know about the run, fixed when training starts."""

    config: Config | None  # the embedded trainer's (remedies are config patches); None for a user's
    num_classes: int  # 0 when not known up front (a user's loop)
    steps_per_epoch: int
    warmup_steps: int
    weight_scale: float  # the typical size of the trainable weights (context.weight_scale)
    modules: tuple[str, ...]  # `encoders.<modality>.backbone|head`, `fusion`; top-level children
    gather_features: bool = True  # distributed: one loss over every rank's batch
    scheduled: bool = True  # the run's schedule is known apart from what the optimizer holds
    bounds: bool = True  # the loss's floor and collapse value can be probed
    pair_based: bool = True  # the loss learns from pairs within the batch (SupCon)
    sampler: str = ""  # a user's batch sampler's class, as findings name it

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

    The subclass docstring is the rule's manual (What it checks / Why it matters / Example /
    Fix), as `quad-doctor explain NAME` prints it; a rule named after a pre-flight check says how
    it differs from that check, whose manual `explain` prints first.
    """

    name: ClassVar[str]  # the check slug its findings carry
    order: ClassVar[int]  # causal position, among the pre-flight checks' orders

    def __init__(self, facts: RunFacts) -> None:
        self.facts = facts
        self.fired = False  # most rules report once

    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        """Whether this rule can judge the run (what it reads is known there)."""
        return True

    @classmethod
    def doc(cls) -> str:
        """The rule's manual: What it checks / Why it matters / Example / Fix."""
        return inspect.cleandoc(cls.__doc__ or "")

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
