from __future__ import annotations

import pytest

from quad_doctor.trainer.config import load_config
from quad_doctor.trainer.schedule import LRSchedule


def schedule(*overrides, steps_per_epoch=10):
    return LRSchedule(load_config(overrides=list(overrides)).train, steps_per_epoch)


def test_cosine_warmup_starts_peaks_and_ends_where_configured():
    s = schedule()  # 30 epochs, 10 warm-up, 1e-7 -> 1e-4 -> 1e-6
    lrs = s.all_steps()
    assert len(lrs) == 300
    assert lrs[0] == pytest.approx(1e-7)
    assert lrs[100] == pytest.approx(1e-4)
    assert max(lrs) == pytest.approx(1e-4)
    assert lrs[-1] == pytest.approx(1e-6)
    assert all(a < b for a, b in zip(lrs[:100], lrs[1:101], strict=True))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:], strict=False))  # then decays


def test_no_warmup_starts_at_the_peak():
    assert schedule("train.warmup_epochs=0").lr_at(0) == pytest.approx(1e-4)


def test_warmup_longer_than_training_never_reaches_the_peak():
    s = schedule("train.num_epochs=2", "train.warmup_epochs=5")
    assert max(s.all_steps()) < 1e-4


def test_constant():
    s = schedule("train.lr_scheduler=constant", "train.learning_rate=0.01")
    assert set(s.all_steps()) == {0.01}
