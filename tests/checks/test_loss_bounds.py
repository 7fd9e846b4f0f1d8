from __future__ import annotations

import math

import pytest

from quad_doctor.checks.loss_bounds import LossBounds
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Severity
from quad_doctor.trainer.config import load_config


def findings(overrides, *more):
    return list(LossBounds().run(DiagnosisContext(load_config(overrides=[*overrides, *more]))))


def test_single_class_batches_leave_no_room_and_say_ln_b_minus_1(small_overrides):
    (found,) = findings(small_overrides, "train.sampler=sequential")
    assert found.severity is Severity.CRITICAL
    assert "ln(15) = 2.7081" in found.title
    assert found.evidence["room_to_fall"] == 0.0
    assert found.evidence["floor"] == pytest.approx(math.log(15), abs=1e-4)
    assert found.evidence["batches_without_room_fraction"] > 0.5
    # the untrained model starts next to the collapse value, where it will stay
    assert abs(found.evidence["untrained_loss"] - math.log(15)) < 0.1
    assert "lr-range-test" in found.explains


def test_stratified_batches_have_room_and_stay_quiet(small_overrides):
    assert findings(small_overrides) == []


def test_batches_without_any_positive_pair_are_critical(small_overrides):
    # one sample per class in every batch: no anchor has a positive, the loss is identically 0
    (found,) = findings(small_overrides, "train.sampler=stratified", "train.batch_size=2")
    assert found.severity is Severity.CRITICAL
    assert found.evidence["batches_without_positives"] == found.evidence["batches"]
