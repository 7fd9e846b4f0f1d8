from __future__ import annotations

import pytest

from quad_doctor.checks.base import SkipCheck
from quad_doctor.checks.lr_schedule import NEGLIGIBLE_MOVEMENT, LRScheduleCheck
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import Severity
from quad_doctor.trainer.config import MODALITIES, load_config, patched_config

# The default schedule's shape (30 epochs, 10 of warm-up) on the small dataset.
DEFAULT_SHAPE = ["train.num_epochs=30", "train.warmup_epochs=10"]


def findings(overrides, patch=None):
    config = load_config(overrides=overrides)
    if patch is not None:
        config = patched_config(config, patch)
    return list(LRScheduleCheck().run(DiagnosisContext(config)))


def serious(found):
    return [f for f in found if f.severity >= Severity.WARNING]


@pytest.mark.parametrize("learning_rate", ["1e-4", "1e-6"])
def test_the_embedded_default_and_a_small_but_real_rate_are_quiet(learning_rate):
    found = findings([f"train.learning_rate={learning_rate}"])
    assert serious(found) == []


def test_evidence_is_the_schedule_the_trainer_applies(small_overrides):
    config = load_config(overrides=small_overrides + DEFAULT_SHAPE)
    ctx = DiagnosisContext(config)
    evidence = LRScheduleCheck._measure(ctx)
    assert evidence["total_steps"] == 30 * ctx.steps_per_epoch
    assert evidence["warmup_steps"] == 10 * ctx.steps_per_epoch
    assert evidence["warmup_start_lr"] == pytest.approx(1e-7)
    assert evidence["peak_lr"] == evidence["max_applied_lr"] == pytest.approx(1e-4)
    assert evidence["end_lr"] == pytest.approx(1e-6)
    assert evidence["sum_lr"] == pytest.approx(sum(ctx.schedule.all_steps()), rel=1e-3)
    assert 0.01 < evidence["weight_scale_rms"] < 0.2
    points = evidence["schedule"]
    assert len(points) <= 50
    assert points[0] == [0, pytest.approx(1e-7)]
    assert points[-1] == [evidence["total_steps"] - 1, pytest.approx(1e-6)]


def test_a_negligible_peak_is_an_error_whose_patch_restores_the_default(small_overrides):
    overrides = small_overrides + DEFAULT_SHAPE + ["train.learning_rate=1e-10"]
    (found,) = findings(overrides)
    assert found.severity is Severity.ERROR
    assert found.title.startswith("learning_rate 1e-10 cannot move the weights")
    assert "warmup_start_lr 1e-07, min_lr 1e-06 lie above it" in found.title
    assert found.evidence["peak_relative_movement"] < NEGLIGIBLE_MOVEMENT
    assert found.config_patch == {"train.learning_rate": 1e-4}
    assert serious(findings(overrides, found.config_patch)) == []


def test_an_absurd_peak_is_an_error(small_overrides):
    overrides = small_overrides + ["train.learning_rate=0.1"]
    (found,) = findings(overrides)
    assert found.severity is Severity.ERROR
    assert "is absurd" in found.title
    assert found.evidence["peak_step_fraction"] > 1
    assert found.config_patch == {"train.learning_rate": 1e-4}
    assert serious(findings(overrides, found.config_patch)) == []


def test_a_very_large_peak_is_a_warning(small_overrides):
    (found,) = findings(small_overrides + ["train.learning_rate=0.01"])
    assert found.severity is Severity.WARNING
    assert "very large" in found.title


def test_an_absurd_peak_with_a_floor_above_the_default_repairs_both(small_overrides):
    overrides = small_overrides + ["train.learning_rate=1.0", "train.min_lr=0.5"]
    (found,) = findings(overrides)
    assert found.config_patch == {"train.learning_rate": 1e-4, "train.min_lr": 1e-6}
    assert serious(findings(overrides, found.config_patch)) == []


@pytest.mark.parametrize(("epochs", "warmup", "repaired"), [(2, 2, 1), (30, 40, 3), (1, 1, 0)])
def test_a_warmup_as_long_as_training_is_an_error(small_overrides, epochs, warmup, repaired):
    overrides = small_overrides + [f"train.num_epochs={epochs}", f"train.warmup_epochs={warmup}"]
    (found,) = findings(overrides)
    assert found.severity is Severity.ERROR
    assert found.title.startswith(f"warm-up ({warmup} epochs) lasts as long as training")
    assert found.evidence["warmup_steps"] == found.evidence["total_steps"]
    assert found.config_patch == {"train.warmup_epochs": repaired}
    assert serious(findings(overrides, found.config_patch)) == []


def test_a_warmup_start_above_the_peak_is_an_error(small_overrides):
    overrides = small_overrides + ["train.warmup_start_lr=1e-3"]
    (found,) = findings(overrides)
    assert found.severity is Severity.ERROR
    assert found.title == (
        "warmup_start_lr 0.001 is above learning_rate 0.0001: the warm-up lowers the learning rate"
    )
    assert found.evidence["schedule"][0] == [0, pytest.approx(1e-3)]
    assert found.config_patch == {"train.warmup_start_lr": 1e-6}
    assert serious(findings(overrides, found.config_patch)) == []


def test_a_floor_above_the_peak_is_an_error(small_overrides):
    overrides = small_overrides + ["train.min_lr=1e-3"]
    (found,) = findings(overrides)
    assert found.severity is Severity.ERROR
    assert found.title.startswith("min_lr 0.001 is above learning_rate 0.0001")
    assert found.evidence["end_lr"] == pytest.approx(1e-3)
    assert found.config_patch == {"train.min_lr": 1e-6}
    assert serious(findings(overrides, found.config_patch)) == []


def test_sgd_is_judged_on_the_shape_only(small_overrides):
    base = small_overrides + DEFAULT_SHAPE + ["train.optimizer=sgd"]
    assert findings(base) == []
    found = findings(base + ["train.learning_rate=1e-10"])
    assert {f.title.split()[0] for f in found} == {"warmup_start_lr", "min_lr"}
    assert found[0].evidence["relative_movement"] is None


def test_a_constant_schedule_ignores_warmup_and_floor(small_overrides):
    overrides = ["train.lr_scheduler=constant", "train.warmup_epochs=5", "train.min_lr=1e-3"]
    assert findings(small_overrides + overrides) == []


def test_nothing_trainable_skips_the_check(small_overrides):
    frozen = [f"model.{m}.freeze_{part}=true" for m in MODALITIES for part in ("backbone", "head")]
    with pytest.raises(SkipCheck):
        findings(small_overrides + frozen + ["model.fusion.freeze=true"])


def test_an_endless_warmup_does_not_hide_a_floor_above_the_peak(small_overrides):
    overrides = small_overrides + ["train.warmup_epochs=2", "train.min_lr=1e-3"]
    found = findings(overrides)
    assert [f.title.split()[0] for f in found] == ["warm-up", "min_lr"]
    patch = {key: value for f in found for key, value in f.config_patch.items()}
    assert serious(findings(overrides, patch)) == []
