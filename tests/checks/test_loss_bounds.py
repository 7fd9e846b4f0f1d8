from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from quad_doctor.checks.loss_bounds import LossBounds
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Severity
from quad_doctor.trainer.config import load_config
from quad_doctor.trainer.embedded import SupConScalar
from quad_doctor.trainer.setup import TrainingSetup


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


def test_batches_without_any_positive_pair_are_critical():
    # every sample its own class: SupCon is identically 0, whatever the outputs
    labels = torch.arange(64)
    inputs = torch.randn(64, 8)
    model = torch.nn.Linear(8, 4)
    setup = TrainingSetup(
        model=model,
        loss_fn=SupConScalar(load_config()),
        optimizer=torch.optim.AdamW(model.parameters()),
        train_loader=DataLoader(TensorDataset(inputs, labels), batch_size=16),
    )
    (found,) = LossBounds().run(DiagnosisContext(setup))
    assert found.severity is Severity.CRITICAL
    assert found.title.startswith("no batch has a positive pair")
    assert found.evidence["batches_without_positives"] == found.evidence["batches"] == 4


def test_the_supcontrast_formula_with_a_base_temperature_is_measured_not_assumed():
    """(T/T_base)·ln(B-1): the widely copied SupContrast loss scales SupCon by T/T_base."""

    def supcontrast(features, labels, temperature=0.1, base_temperature=0.07):
        features = torch.nn.functional.normalize(features, dim=1)
        logits = features @ features.T / temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        self_mask = torch.eye(len(labels), dtype=torch.bool)
        positives = (labels[:, None] == labels[None, :]) & ~self_mask
        log_prob = logits - torch.log(torch.exp(logits).masked_fill(self_mask, 0).sum(1, True))
        mean = (log_prob * positives).sum(1) / positives.sum(1).clamp(min=1)
        return -(temperature / base_temperature) * mean[positives.any(1)].mean()

    labels = torch.arange(96) // 16  # sequential batches of 16: one class each
    model = torch.nn.Linear(8, 4)
    setup = TrainingSetup(
        model=model,
        loss_fn=supcontrast,
        optimizer=torch.optim.AdamW(model.parameters()),
        train_loader=DataLoader(TensorDataset(torch.randn(96, 8), labels), batch_size=16),
    )
    (found,) = LossBounds().run(DiagnosisContext(setup))
    scaled = 0.1 / 0.07 * math.log(15)
    assert found.severity is Severity.CRITICAL
    assert found.evidence["collapse_value"] == pytest.approx(scaled, abs=1e-3)
    assert found.evidence["floor"] == pytest.approx(scaled, abs=1e-3)


def test_an_untrained_model_whose_outputs_are_one_point_starts_at_the_collapse_value():
    labels = torch.arange(96) % 6  # six classes in every batch: room to fall
    model = torch.nn.Linear(8, 4)
    torch.nn.init.zeros_(model.weight)  # every sample maps to the bias: one point
    setup = TrainingSetup(
        model=model,
        loss_fn=SupConScalar(load_config()),
        optimizer=torch.optim.AdamW(model.parameters()),
        train_loader=DataLoader(TensorDataset(torch.randn(96, 8), labels), batch_size=16),
    )
    (found,) = LossBounds().run(DiagnosisContext(setup))
    assert found.severity is Severity.WARNING
    assert found.title.startswith("the untrained model's outputs are collapsed")
    assert found.evidence["untrained_loss"] == pytest.approx(math.log(15), abs=1e-3)
    assert found.evidence["collapse_value"] == pytest.approx(math.log(15), abs=1e-3)
