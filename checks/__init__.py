"""Every diagnostic check, in causal order: upstream faults first."""

from __future__ import annotations

from quad_doctor.checks.base import Check
from quad_doctor.checks.data_integrity import DataIntegrity
from quad_doctor.checks.dataset_imbalance import DatasetImbalance
from quad_doctor.checks.frozen_parameters import FrozenParameters
from quad_doctor.checks.gradient_flow import GradientFlow
from quad_doctor.checks.loss_bounds import LossBounds
from quad_doctor.checks.lr_range_test import LRRangeTest
from quad_doctor.checks.lr_schedule import LRScheduleCheck
from quad_doctor.checks.sampler_class_mix import SamplerClassMix

ALL_CHECKS: tuple[type[Check], ...] = (
    DataIntegrity,
    DatasetImbalance,
    SamplerClassMix,
    LossBounds,
    FrozenParameters,
    LRScheduleCheck,
    LRRangeTest,
    GradientFlow,
)

__all__ = ["ALL_CHECKS", "Check"]
