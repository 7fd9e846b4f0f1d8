"""The LR range test's sweep: real training steps on a copy at exponentially growing learning rates.

SupCon is bounded, so a learning rate that is too high shows as a return to the collapse value
ln(B-1) (every embedding the same), not as an explosion: the sweep stops on NaN/Inf, on divergence
and on that collapse. The suggestion and verdict are built on top of this (issue 5, in progress).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from quad_doctor.context import DiagnosisContext, isolated_rng
from quad_doctor.trainer.losses import supcon_collapse_value

DEFAULT_ITERS = 100
# Healthy SupCon on the embedded default collapses to ln(31) by lr 0.07 and moves nothing below
# 1e-6 in 100 steps; this range brackets both with room to spare.
DEFAULT_START_LR = 1e-7
DEFAULT_END_LR = 10.0
# Debiased exponential moving average of the loss; 0.9 averages about 10 steps, short enough to
# follow a 100-step sweep (fastai's 0.98 lags about 50 steps behind it).
SMOOTHING_BETA = 0.9
# Divergence: the smoothed loss above this multiple of its best (torch-lr-finder uses 5, fastai 4).
DIVERGENCE_FACTOR = 4.0
# Collapse: once this far below ln(B-1), the smoothed loss has come back to within this of it.
COLLAPSE_DEPTH = 0.05
COLLAPSE_RETURN = 0.01


@dataclass(frozen=True)
class Sweep:
    """One sweep: the learning rates tried, the raw and smoothed losses, and why it stopped."""

    lr: list[float]
    loss: list[float]
    smoothed: list[float]
    stop_reason: str  # "end", "nan", "diverged" or "collapsed"
    collapse_value: float


def sweep_lrs(start_lr: float, end_lr: float, iters: int) -> list[float]:
    """`iters` learning rates growing exponentially from `start_lr` to `end_lr`."""
    if iters < 2:
        raise ValueError(f"iters must be >= 2, got {iters}")
    ratio = end_lr / start_lr
    return [start_lr * ratio ** (i / (iters - 1)) for i in range(iters)]


def run_sweep(
    ctx: DiagnosisContext,
    iters: int = DEFAULT_ITERS,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    epoch: int = 1,
) -> Sweep:
    """Train a copy of the model on the trainer's own batches of `epoch` while the LR grows.

    The model and optimizer the context hands out are never touched: the sweep trains a copy with
    a fresh optimizer built as the trainer builds it, and draws no global random numbers outside
    `torch.random.fork_rng`.
    """
    model = ctx.model_copy()
    model.train()
    optimizer = ctx.optimizer_for(model)
    batches = ctx.epoch_batches(epoch)
    collapse = supcon_collapse_value(ctx.config.train.batch_size)
    lrs, losses, smoothed = [], [], []
    average, best, reason = 0.0, math.inf, "end"
    with isolated_rng(ctx.config.train.seed, ctx.device):
        for step, lr in enumerate(sweep_lrs(start_lr, end_lr, iters)):
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = ctx.batch(batches[step % len(batches)])
            features = model(batch.video, batch.audio, batch.sensor, batch.text)
            output = ctx.loss_fn(features, batch.labels)
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()
            loss = output.loss.item()
            if not math.isfinite(loss):
                reason = "nan"
                break
            average = SMOOTHING_BETA * average + (1 - SMOOTHING_BETA) * loss
            value = average / (1 - SMOOTHING_BETA ** (step + 1))
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(value)
            best = min(best, value)
            if value > DIVERGENCE_FACTOR * best:
                reason = "diverged"
                break
            if best < collapse - COLLAPSE_DEPTH and value > collapse - COLLAPSE_RETURN:
                reason = "collapsed"
                break
    return Sweep(lrs, losses, smoothed, reason, collapse)
