from __future__ import annotations

import copy
import dataclasses
import math
import random

import numpy as np
import pytest
import torch

from quad_doctor.checks.lr_range_test import LRRangeTest
from quad_doctor.context import DiagnosisContext
from quad_doctor.engine import run_check
from quad_doctor.lr_range import (
    BELOW_PEAK,
    RESPONSE,
    Sweep,
    analyse,
    lr_range_test,
    sweep_lrs,
)
from quad_doctor.trainer.config import load_config

ITERS = 60


def context(overrides, *more):
    return DiagnosisContext(load_config(overrides=[*overrides, *more]))


LN_31 = math.log(31)


def synthetic_sweep(loss, lrs=None, stop="end", collapse=LN_31, train_noise=0.02):
    """A sweep with a given held-out curve, for the analysis alone."""
    lrs = lrs or sweep_lrs(1e-6, 1e-1, len(loss))
    rng = np.random.default_rng(0)
    train = [v + float(rng.normal(0, train_noise)) for v in loss]
    return Sweep(lrs, list(loss), train, train, stop, collapse, 0, 0, 10, 0.1)


def valley_curve(n=80, onset=30, bottom=55, end=65, depth=0.8, top=3.434):
    """Flat at `top`, falls linearly to `top - depth` at `bottom`, back up by `end`."""
    curve = []
    for i in range(n):
        if i <= onset:
            curve.append(top)
        elif i <= bottom:
            curve.append(top - depth * (i - onset) / (bottom - onset))
        elif i <= end:
            curve.append(top - depth + depth * (i - bottom) / (end - bottom))
        else:
            curve.append(top)
    return curve


def test_learning_rates_grow_exponentially_between_the_ends():
    lrs = sweep_lrs(1e-6, 1.0, 7)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert [b / a for a, b in zip(lrs[:-1], lrs[1:], strict=True)] == pytest.approx([10.0] * 6)


def test_the_suggestion_is_the_middle_of_the_valley_and_warm_up_two_decades_below():
    sweep = synthetic_sweep(valley_curve(), stop="rebounded")
    test = analyse(sweep, configured_lr=sweep.lr[40], training_movement=1.0)
    assert test.verdict == "ok"
    # the first point below the flat level, and the lowest point
    onset, bottom = sweep.lr[31], sweep.lr[55]
    assert test.suggested_lr == pytest.approx(math.sqrt(onset * bottom), rel=0.3)
    assert test.warmup_start_lr == pytest.approx(test.suggested_lr / BELOW_PEAK)
    assert test.reliability == "high" and test.snr > 20


def test_single_step_spikes_do_not_make_a_valley():
    curve = [3.434] * 80
    curve[20] = curve[50] = 2.5  # two lucky batches, each one step long
    test = analyse(synthetic_sweep(curve), 1e-4, 1.0)
    assert test.verdict == "not-lr" and test.suggested_lr is None


def test_sinking_from_above_to_ln_b_minus_1_is_not_learning():
    # an untrained loss above ln(B-1) that only collapses to it never gets below it
    curve = list(np.linspace(3.6, 3.434, 50)) + [3.434] * 30
    test = analyse(synthetic_sweep(curve), 1e-4, 1.0)
    assert test.verdict == "not-lr"
    assert test.reference == pytest.approx(math.log(31))


def test_verdicts_on_the_configured_learning_rate():
    sweep = synthetic_sweep(valley_curve(), stop="rebounded")
    end = analyse(sweep, 1e-4, 1.0).valley["end_lr"]
    assert analyse(sweep, end * 2, 1.0).verdict == "too-high"
    assert analyse(sweep, 1e-4, training_movement=1e-9).verdict == "too-low"
    assert analyse(sweep, 30.0, 1.0).verdict == "too-high"


def test_two_decades_under_a_reliable_valley_is_too_low_whatever_the_movement():
    sweep = synthetic_sweep(valley_curve())
    bottom = analyse(sweep, 1e-4, 1.0).valley["bottom_lr"]
    below = analyse(sweep, bottom / 150, training_movement=1e6)
    assert below.verdict == "too-low" and below.too_low_because == "decades"
    assert analyse(sweep, bottom / 50, training_movement=1e6).verdict == "ok"


def test_sgd_movement_is_measured_per_unit_of_lr_not_assumed():
    curve = valley_curve()
    lrs = sweep_lrs(1e-6, 1e-1, len(curve))
    # an optimizer whose step moves the weights by 0.01 x lr (a small gradient)
    sweep = dataclasses.replace(synthetic_sweep(curve, lrs), movement=[0.01 * lr for lr in lrs])
    test = analyse(sweep, lrs[31], training_movement=sum(lrs[:31]) * 2)
    # the schedule's sum of lr is twice the sweep's up to the onset, so at the same measured
    # movement per lr it moves twice as far as the sweep had: not too low
    assert test.training_movement == pytest.approx(0.01 * sum(lrs[:31]) * 2, rel=1e-6)
    assert test.sweep_movement == pytest.approx(0.01 * sum(lrs[: 31 + 1]), rel=0.1)
    assert test.verdict == "ok"
    assert analyse(sweep, lrs[31], training_movement=sum(lrs[:31]) / 10).verdict == "too-low"


def test_a_sweep_that_ends_inside_the_valley_leaves_its_end_open():
    curve = valley_curve(n=60, onset=20, bottom=59, end=70)
    test = analyse(synthetic_sweep(curve[:60]), 1e-4, 1.0)
    assert test.valley["end_lr"] is None and test.verdict == "ok"


def test_healthy_sweep_suggests_and_stops_past_the_valley(small_overrides):
    ctx = context(small_overrides)
    test = lr_range_test(ctx, iters=ITERS)
    sweep = test.sweep
    assert test.verdict in ("ok", "too-low")  # two epochs of 1e-4 move the weights little
    assert 1e-5 <= test.suggested_lr <= 3e-2
    assert test.min_loss < sweep.collapse_value - RESPONSE
    assert sweep.stop_reason in ("rebounded", "collapsed") and len(sweep.lr) < ITERS
    assert sweep.single_class_batches == 0
    # a fixed held-out batch: its curve is far smoother than the training batches'
    held, train = np.diff(sweep.loss[:20]), np.diff(sweep.train_loss[:20])
    assert np.abs(held).mean() < np.abs(train).mean() / 3


def test_single_class_batches_are_not_a_learning_rate_problem(small_overrides):
    finding = only_finding(small_overrides, "train.sampler=sequential")
    evidence = finding.evidence
    assert evidence["verdict"] == "not-lr" and evidence["suggested_lr"] is None
    assert "ln(15) = 2.7081" in finding.title and "hold one class" in finding.title
    assert "sampler" in finding.remedy and not finding.config_patch


def test_absurd_learning_rates_get_too_low_and_too_high_with_the_suggestion(small_overrides):
    low = only_finding(small_overrides, "train.learning_rate=1e-10")
    high = only_finding(small_overrides, "train.learning_rate=30")
    assert low.evidence["verdict"] == "too-low" and high.evidence["verdict"] == "too-high"
    for finding in (low, high):
        suggested = finding.evidence["suggested_lr"]
        assert finding.config_patch["train.learning_rate"] == suggested
        assert finding.config_patch["train.warmup_start_lr"] == pytest.approx(suggested / 100)
        assert f"{suggested:.2g}" in finding.title


def only_finding(overrides, *more):
    ctx = context(overrides, *more)
    ctx.options[LRRangeTest.name] = {"iters": ITERS}
    run, found = run_check(LRRangeTest, ctx)
    assert run.status != "error", run.message
    assert len(found) == 1
    assert ctx.published["lr_range_test"]["verdict"] == found[0].evidence["verdict"]
    return found[0]


def test_nan_in_the_data_stops_the_sweep_at_once_and_is_not_the_lr():
    ctx = context(["data.synthetic.num_samples=240", "data.synthetic.nan_fraction=0.5"])
    test = lr_range_test(ctx, iters=ITERS)
    assert test.sweep.stop_reason == "nan" and len(test.sweep.lr) < 3
    assert test.verdict == "not-lr" and test.suggested_lr is None


def test_mid_training_state_is_left_bit_exact(small_overrides):
    ctx = context(small_overrides)
    model, optimizer = ctx.model, ctx.optimizer
    for rows in ctx.epoch_batches()[:2]:  # a model and optimizer in the middle of training
        loss = ctx.step_loss(model, ctx.batch(rows))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    before = (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(optimizer.state_dict()),
        [p.grad.clone() for p in model.parameters() if p.grad is not None],
        random.getstate(),
        np.random.get_state(),
        torch.get_rng_state(),
        ctx.schedule.all_steps(),
        ctx.epoch_batches(),
    )

    lr_range_test(ctx, iters=20)

    assert_same_tensors(model.state_dict(), before[0])
    after_optimizer = optimizer.state_dict()
    assert after_optimizer["param_groups"] == before[1]["param_groups"]
    for key, state in before[1]["state"].items():
        assert_same_tensors(after_optimizer["state"][key], state)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(grads, before[2], strict=True))
    assert random.getstate() == before[3]
    assert np.array_equal(np.random.get_state()[1], before[4][1])
    assert torch.equal(torch.get_rng_state(), before[5])
    assert ctx.schedule.all_steps() == before[6]
    assert all(np.array_equal(a, b) for a, b in zip(ctx.epoch_batches(), before[7], strict=True))


def assert_same_tensors(after, before):
    assert after.keys() == before.keys()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(after[key], value), key
        else:
            assert after[key] == value, key


def test_repeated_sweeps_report_their_agreement(small_overrides):
    test = lr_range_test(context(small_overrides), iters=40, repeats=2)
    assert len(test.repeats) == 2
    suggestions = [r["suggested_lr"] for r in test.repeats]
    spread = abs(math.log10(suggestions[0] / suggestions[1]))
    assert test.spread_decades == pytest.approx(spread, abs=0.02)
    assert min(suggestions) * 0.99 <= test.suggested_lr <= max(suggestions) * 1.01
