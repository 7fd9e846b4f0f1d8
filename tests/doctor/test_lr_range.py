from __future__ import annotations

import math

import pytest
import torch

from quad_doctor.context import DiagnosisContext
from quad_doctor.lr_range import COLLAPSE_DEPTH, run_sweep, sweep_lrs
from quad_doctor.trainer.config import load_config

ITERS = 60


def context(overrides, *more):
    return DiagnosisContext(load_config(overrides=[*overrides, *more]))


def test_learning_rates_grow_exponentially_between_the_ends():
    lrs = sweep_lrs(1e-6, 1.0, 7)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert [b / a for a, b in zip(lrs[:-1], lrs[1:], strict=True)] == pytest.approx([10.0] * 6)


def test_healthy_sweep_learns_below_ln_b_minus_1_then_stops_on_collapse(small_overrides):
    ctx = context(small_overrides)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    rng = torch.get_rng_state()
    sweep = run_sweep(ctx, iters=ITERS)
    assert min(sweep.smoothed) < sweep.collapse_value - COLLAPSE_DEPTH
    assert sweep.stop_reason == "collapsed" and len(sweep.lr) < ITERS
    assert sweep.smoothed[-1] > sweep.collapse_value - 0.01
    # a copy was trained: the context's model, optimizer and the global RNG are untouched
    assert all(torch.equal(before[k], v) for k, v in ctx.model.state_dict().items())
    assert ctx.optimizer.state_dict()["state"] == {}
    assert torch.equal(torch.get_rng_state(), rng)


def test_single_class_batches_never_get_below_the_collapse_value(small_overrides):
    sweep = run_sweep(context(small_overrides, "train.sampler=sequential"), iters=ITERS)
    assert sweep.stop_reason == "end" and len(sweep.lr) == ITERS
    assert min(sweep.smoothed) > sweep.collapse_value - COLLAPSE_DEPTH
    assert sweep.collapse_value == pytest.approx(math.log(15))


def test_nan_in_the_data_stops_the_sweep_at_once():
    ctx = context(["data.synthetic.num_samples=240", "data.synthetic.nan_fraction=0.5"])
    sweep = run_sweep(ctx, iters=ITERS)
    assert sweep.stop_reason == "nan" and len(sweep.lr) < 3
