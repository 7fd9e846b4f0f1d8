"""The live doctor's rules, in causal order: what each training step shows, turned into findings.

`LiveDoctor` (doctor/live.py) measures every step into a `StepRecord` and hands it to each rule;
a rule keeps what it needs of the stream and returns the findings it makes now. Rules that
overlap a pre-flight check carry its name and build its finding with the check's own function,
so the live report and `diagnose` say the same thing in the same words. Measured numbers in the
rules are from the embedded default (batch 32, 37 steps per epoch) unless said otherwise.
"""

from __future__ import annotations

from quad_doctor.checks import ALL_CHECKS
from quad_doctor.rules.base import Rule
from quad_doctor.rules.divergence import DivergenceRule
from quad_doctor.rules.embedding_collapse import EmbeddingCollapseRule
from quad_doctor.rules.gradient_flow import GradientRule
from quad_doctor.rules.loss_bounds import LossBoundsRule
from quad_doctor.rules.loss_pinned import LossPinnedRule
from quad_doctor.rules.lr_schedule import AppliedLRRule
from quad_doctor.rules.non_finite import NonFiniteRule
from quad_doctor.rules.plateau import PlateauRule
from quad_doctor.rules.sampler_class_mix import ClassMixRule

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
# The rules with no pre-flight check of the same name: their manuals stand alone.
LIVE_ONLY: tuple[type[Rule], ...] = tuple(
    rule for rule in LIVE_RULES if rule.name not in {check.name for check in ALL_CHECKS}
)


def live_rule(name: str) -> type[Rule] | None:
    """The live rule called `name`, if there is one."""
    return next((rule for rule in LIVE_RULES if rule.name == name), None)


def live_only_rule(name: str) -> type[Rule] | None:
    """The live rule called `name` that has no pre-flight check of its own, if there is one."""
    return next((rule for rule in LIVE_ONLY if rule.name == name), None)


__all__ = ["LIVE_ONLY", "LIVE_RULES", "Rule", "live_only_rule", "live_rule"]
