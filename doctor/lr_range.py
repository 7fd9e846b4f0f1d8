"""The LR range test: real training steps on a copy at exponentially growing learning rates.

Each step trains on the trainer's own next batch, then measures the loss on one held-out batch of
the same sampler (the first of the epoch, never trained on). That fixed batch removes the
batch-to-batch noise that fools the peers' "steepest point": the curve moves only when the model
does. SupCon is bounded, so a learning rate that is too high shows as a return to the collapse
value ln(B-1) (every embedding the same), not as an explosion: the sweep stops on NaN/Inf, on
divergence and on that collapse.

The analysis is SupCon-aware. A loss can only fall below ln(B-1) by learning to tell classes
apart, so the descent is measured from the lower of the untrained loss and ln(B-1): an untrained
loss above ln(B-1) that merely sinks to it is collapse, not learning. The valley runs from where
the held-out loss starts to fall below that level to its lowest point; the suggestion is its
geometric middle, the warm-up start two decades below.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from quad_doctor.context import DiagnosisContext, isolated_rng
from quad_doctor.findings import significant
from quad_doctor.trainer.losses import positives_per_anchor, supcon_collapse_value

DEFAULT_ITERS = 100
# Where the sweep runs. Adam(W) moves each weight by about `lr` per step, so the span follows the
# typical size w of the trainable weights (~0.07 on the embedded default): 100 steps at w·1e-4
# move a weight by at most 1 % of its size, and one step at w/3 moves it by a third (the
# lr-schedule check calls a tenth large). That is 7e-6 … 2.3e-2 here, 33 points per decade; the
# healthy valley lies at 1e-4 … 1e-2 (docs/benchmarks.md). A wider span (fastai's 1e-7 … 10, 12.5
# points per decade) leaves the model a handful of steps to learn before it collapses, and some
# seeds then show no valley at all.
START_MOVE = 1e-4
END_MOVE = 1 / 3
# SGD's step scales with the gradient, which is not known before the sweep: the peers' span.
SGD_RANGE = (1e-6, 1.0)
# Debiased exponential moving average of the training loss (the peers' smoothing): 0.9 averages
# about 10 steps. It drives the divergence stop; the held-out curve drives the analysis.
SMOOTHING_BETA = 0.9
# Divergence: a loss above this multiple of its best (torch-lr-finder uses 5, fastai 4).
DIVERGENCE_FACTOR = 4.0
# Collapse: once the held-out loss is this far below ln(B-1), it has come back to within this for
# this many steps in a row (a single step back is often noise of a model still learning).
COLLAPSE_DEPTH = 0.05
COLLAPSE_RETURN = 0.01
COLLAPSE_STEPS = 3
# Past the valley: the held-out loss has climbed back this share of its descent (for
# COLLAPSE_STEPS steps in a row). Where a few steps undo half of what was learned, a long run at
# that learning rate does not hold; the sweep stops and the valley ends there.
REBOUND = 0.5
# A centred running median over this many points removes single-step spikes without the lag of
# an exponential average (an EMA at 0.9 trails the curve by ~10 steps, 0.6 decades here).
MEDIAN_WINDOW = 5
# The held-out loss must fall this far below its reference to count as a response. The held-out
# batch is fixed, so its curve only moves with the weights: on single-class batches it stays
# within 0.001 of ln(31), and a healthy valley is 0.1…0.9 deep (docs/benchmarks.md).
RESPONSE = 0.02
# Warm-up starts and the cosine floor sit two decades below the peak (the default's floor is 1e-6
# for 1e-4); the lr-schedule check repairs schedules the same way.
BELOW_PEAK = 100.0
# Reliability: the valley's depth in units of the training loss's batch-to-batch noise.
RELIABLE_SNR = 5.0
WEAK_SNR = 2.0
# Running-median width for the training loss's noise estimate.
NOISE_WINDOW = 9
# A learning rate this many times below the valley's bottom is too low whatever the movement
# bound says: SGD at 1e-4 on the embedded default sits two decades under its valley, and its 30
# epochs end at loss 3.3985 and val_accuracy 0.567, against 0.977 at the suggested 0.0093.
DECADES_UNDER_VALLEY = 100.0


@dataclass(frozen=True)
class Sweep:
    """One sweep: learning rates tried, the held-out and training losses, and why it stopped."""

    lr: list[float]
    loss: list[float]  # held-out batch's loss after each step
    train_loss: list[float]  # the step's own training loss
    smoothed: list[float]  # debiased EMA of train_loss
    stop_reason: str  # "end", "nan", "diverged", "collapsed" or "rebounded"
    collapse_value: float  # ln(B-1) for the held-out batch
    single_class_batches: int  # among the batches the sweep trained on
    batches_without_positives: int
    batches: int
    duration_s: float
    first_lr: float = math.nan  # the span asked for (the curve may stop early)
    # ||dw||/||w|| of every step, measured for optimizers whose step scales with the gradient
    movement: list[float] = field(default_factory=list)


def sweep_lrs(start_lr: float, end_lr: float, iters: int) -> list[float]:
    """`iters` learning rates growing exponentially from `start_lr` to `end_lr`."""
    if iters < 2:
        raise ValueError(f"iters must be >= 2, got {iters}")
    ratio = end_lr / start_lr
    return [start_lr * ratio ** (i / (iters - 1)) for i in range(iters)]


def default_range(ctx: DiagnosisContext) -> tuple[float, float]:
    """The sweep's span for this model and optimizer (see `START_MOVE`)."""
    scale = ctx.weight_scale
    if not ctx.adaptive or not scale:
        return SGD_RANGE
    return float(f"{scale * START_MOVE:.2g}"), float(f"{scale * END_MOVE:.2g}")


def run_sweep(
    ctx: DiagnosisContext,
    iters: int = DEFAULT_ITERS,
    start_lr: float | None = None,
    end_lr: float | None = None,
    epoch: int = 1,
) -> Sweep:
    """Train a copy of the model on the trainer's own batches of `epoch` while the LR grows.

    The model and optimizer the context hands out are never touched: the sweep trains a copy with
    a fresh optimizer built as the trainer builds it, and draws no global random numbers outside
    `isolated_rng`. The epoch's first batch is held out and measured after every step. The span
    defaults to `default_range`.
    """
    started = time.perf_counter()
    default_start, default_end = default_range(ctx)
    start_lr = default_start if start_lr is None else start_lr
    end_lr = default_end if end_lr is None else end_lr
    model = ctx.model_copy()
    model.train()
    optimizer = ctx.optimizer_for(model)
    batches = ctx.epoch_batches(epoch)
    # held out: the first batch of the usual size (a batch of leftovers would be noisier)
    first = next(i for i, b in enumerate(batches) if len(b) == ctx.batch_size)
    held_out, train = batches[first], (batches[:first] + batches[first + 1 :]) or batches
    probe = ctx.batch(held_out)
    bounds = ctx.loss_bounds(ctx.labels[held_out])
    collapse = bounds.collapse if bounds is not None else supcon_collapse_value(len(held_out))
    used = train[: min(iters, len(train))]
    positives = [positives_per_anchor(ctx.labels[rows]) for rows in used]
    measure = not ctx.adaptive
    params = [p for p in model.parameters() if p.requires_grad]
    movement: list[float] = []
    lrs: list[float] = []
    losses: list[float] = []
    train_losses: list[float] = []
    smoothed: list[float] = []
    average, best_smoothed, best, reason, returned = 0.0, math.inf, math.inf, "end", 0
    reference = math.inf
    with isolated_rng(ctx.seed, ctx.device):
        for step, lr in enumerate(sweep_lrs(start_lr, end_lr, iters)):
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = ctx.batch(train[step % len(train)])
            loss = ctx.step_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            before = _flat(params) if measure else None
            optimizer.step()
            if before is not None:
                moved = torch.linalg.vector_norm(_flat(params) - before)
                movement.append(float(moved) / max(float(torch.linalg.vector_norm(before)), 1e-12))
            with torch.no_grad():
                held = ctx.step_loss(model, probe).item()
            train_loss = loss.item()
            if not (math.isfinite(train_loss) and math.isfinite(held)):
                reason = "nan"
                break
            average = SMOOTHING_BETA * average + (1 - SMOOTHING_BETA) * train_loss
            value = average / (1 - SMOOTHING_BETA ** (step + 1))
            lrs.append(lr)
            losses.append(held)
            train_losses.append(train_loss)
            smoothed.append(value)
            best_smoothed, best = min(best_smoothed, value), min(best, held)
            if step == 2:
                reference = min(statistics.median(losses), collapse)
            if value > DIVERGENCE_FACTOR * best_smoothed or held > DIVERGENCE_FACTOR * best:
                reason = "diverged"
                break
            back = came_back(best, held, reference, collapse)
            returned = returned + 1 if back else 0
            if returned >= COLLAPSE_STEPS:
                reason = back
                break
    return Sweep(
        lr=lrs,
        loss=losses,
        train_loss=train_losses,
        smoothed=smoothed,
        stop_reason=reason,
        collapse_value=collapse,
        single_class_batches=sum(int(p.size > 0 and (p == p.size - 1).all()) for p in positives),
        batches_without_positives=sum(int(p.size > 0 and (p == 0).all()) for p in positives),
        batches=len(used),
        duration_s=time.perf_counter() - started,
        first_lr=start_lr,
        movement=movement[: len(lrs)],
    )


def came_back(best: float, level: float, reference: float, collapse: float) -> str:
    """ "collapsed" when a loss that had gone `COLLAPSE_DEPTH` below ln(B-1) is back within
    `COLLAPSE_RETURN` of it, "rebounded" when it has climbed back `REBOUND` of its descent from
    `reference`; else ""."""
    if best < collapse - COLLAPSE_DEPTH and level > collapse - COLLAPSE_RETURN:
        return "collapsed"
    if best < reference - RESPONSE and level > best + REBOUND * (reference - best):
        return "rebounded"
    return ""


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    """Every parameter's values in one float32 vector (a copy)."""
    return torch.cat([p.detach().float().reshape(-1) for p in params])


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running median; the ends repeat the edge values."""
    if len(values) == 0:
        return values
    half = window // 2
    padded = np.pad(values, half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1)


@dataclass(frozen=True)
class RangeTest:
    """The analysed LR range test: suggestion, verdict on the configured LR, and reliability."""

    sweep: Sweep
    configured_lr: float
    verdict: str
    suggested_lr: float | None
    warmup_start_lr: float | None
    reference: float  # the level a descent counts from: min(untrained loss, ln(B-1))
    min_loss: float  # lowest point of the median-filtered held-out curve
    valley: dict[str, float | None] | None  # onset, bottom and end of the valley, as LRs
    noise: float  # batch-to-batch noise (robust std) of the training loss
    snr: float  # valley depth / noise
    reliability: str  # "high", "medium", "low" or "none"
    # What the configured schedule moves the weights by, and what the sweep had moved them by
    # when its loss began to fall: Σ lr for Adam and its family (the bound on a weight's move);
    # for optimizers whose step scales with the gradient (SGD) the sweep's measured
    # Σ ||dw||/||w||, and the schedule's Σ lr times the measured movement per unit of lr.
    training_movement: float
    sweep_movement: float | None
    repeats: list[dict[str, Any]] = field(default_factory=list)  # one entry per extra sweep
    spread_decades: float | None = None  # of the suggestions over repeated sweeps
    too_low_because: str = ""  # "movement" or "decades": which rule called the LR too low

    def to_dict(self) -> dict[str, Any]:
        """The `lr_range_test` object of the JSON report (DESIGN.md), with its evidence."""
        sweep = self.sweep
        return {
            "lr": [float(f"{x:.6g}") for x in sweep.lr],
            "loss": [round(x, 5) for x in sweep.loss],
            "train_loss": [round(x, 5) for x in sweep.train_loss],
            "smoothed": [round(x, 5) for x in sweep.smoothed],
            "suggested_lr": significant(self.suggested_lr, 2),
            "warmup_start_lr": significant(self.warmup_start_lr, 2),
            "verdict": self.verdict,
            "configured_lr": self.configured_lr,
            "valley": self.valley,
            "reference_loss": round(self.reference, 5),
            "min_loss": round(self.min_loss, 5),
            "collapse_value": round(sweep.collapse_value, 5),
            "reliability": {
                "level": self.reliability,
                "snr": None if not math.isfinite(self.snr) else round(self.snr, 2),
                "depth": round(self.reference - self.min_loss, 5),
                "noise": round(self.noise, 5),
                "spread_decades": self.spread_decades,
                "repeats": self.repeats,
            },
            "training_movement": significant(self.training_movement, 2),
            "sweep_movement": significant(self.sweep_movement, 2),
            "movement_measure": "measured" if self.sweep.movement else "sum of lr",
            "too_low_because": self.too_low_because or None,
            "stop_reason": sweep.stop_reason,
            "iterations": len(sweep.lr) + (sweep.stop_reason == "nan"),
            "duration_s": round(sweep.duration_s, 3),
        }


def analyse(sweep: Sweep, configured_lr: float, training_movement: float) -> RangeTest:
    """Find the valley, suggest a learning rate and judge the configured one.

    `training_movement` is Σ lr over the configured schedule.

    - `not-lr`: the held-out loss never falls `RESPONSE` below min(untrained loss, ln(B-1)) —
      in its running median, or, when the sweep stopped because the loss came back, at all.
    - `too-high`: the configured LR lies past the valley's end, where the loss climbed back
      `REBOUND` of its descent, collapsed, diverged or went NaN.
    - `too-low`: the configured schedule's whole movement is below what the sweep had moved
      when its loss began to fall (see `RangeTest.training_movement`), or the learning rate lies
      `DECADES_UNDER_VALLEY` times or more under the bottom of a reliable valley whose end the
      sweep saw (one that ends with the sweep may go deeper still).
    - `ok` otherwise.
    """
    lrs = np.asarray(sweep.lr)
    curve = running_median(np.asarray(sweep.loss), MEDIAN_WINDOW)
    train = np.asarray(sweep.train_loss)
    noise = 0.0
    if len(train) >= 3:
        residual = train - running_median(train, NOISE_WINDOW)
        noise = 1.4826 * float(np.median(np.abs(residual)))
    if len(curve) == 0:
        return RangeTest(
            sweep, configured_lr, "not-lr", None, None, math.nan, math.nan, None, noise,
            0.0, "none", training_movement, None,
        )  # fmt: skip
    raw = np.asarray(sweep.loss)
    start = float(np.median(raw[:3]))
    reference = min(start, sweep.collapse_value)
    # The median filter keeps one-step spikes out of the valley. A sweep that stopped because the
    # loss fell and then came back (collapse, rebound) did respond, even when too briefly for the
    # filter: then the raw curve is used and the reliability is at most "low".
    brief = not (curve < reference - RESPONSE).any()
    if brief and sweep.stop_reason in ("collapsed", "rebounded"):
        curve = raw
    bottom = int(np.argmin(curve))
    min_loss = float(curve[bottom])
    depth = reference - min_loss
    below = curve < reference - RESPONSE
    if not below[bottom]:
        return RangeTest(
            sweep, configured_lr, "not-lr", None, None, reference, min_loss, None, noise,
            depth / noise if noise > 0 else 0.0, "none", training_movement, None,
        )  # fmt: skip
    onset = bottom
    while onset > 0 and below[onset - 1]:
        onset -= 1
    after = np.flatnonzero(curve[bottom:] > min_loss + REBOUND * depth)
    if len(after):
        end_lr: float | None = float(lrs[bottom + after[0]])
    elif sweep.stop_reason != "end":
        end_lr = float(lrs[-1])
    else:
        end_lr = None  # the sweep ended inside the valley
    suggested = math.sqrt(lrs[onset] * lrs[bottom])
    sweep_movement = float(lrs[: onset + 1].sum())
    if sweep.movement:
        # SGD moves weights by lr × gradient: measure the movement per unit of lr before the
        # valley, and what the schedule's learning rates would move at that rate
        moved = np.asarray(sweep.movement[: onset + 1])
        training_movement *= float(np.median(moved / lrs[: onset + 1]))
        sweep_movement = float(moved.sum())
    snr = depth / noise if noise > 0 else math.inf
    level = "high" if snr >= RELIABLE_SNR else "medium" if snr >= WEAK_SNR else "low"
    if brief:
        level = "low"  # the valley is a step or two wide
    because = ""
    if end_lr is not None and configured_lr >= end_lr:
        verdict = "too-high"
    elif end_lr is None and configured_lr > lrs[-1]:
        verdict = "too-high"
    elif training_movement < sweep_movement:
        verdict, because = "too-low", "movement"
    elif (
        end_lr is not None
        and level != "low"
        and configured_lr * DECADES_UNDER_VALLEY <= lrs[bottom]
    ):
        verdict, because = "too-low", "decades"
    else:
        verdict = "ok"
    return RangeTest(
        sweep=sweep,
        configured_lr=configured_lr,
        verdict=verdict,
        suggested_lr=suggested,
        warmup_start_lr=suggested / BELOW_PEAK,
        reference=reference,
        min_loss=min_loss,
        valley={
            "onset_lr": significant(float(lrs[onset]), 3),
            "bottom_lr": significant(float(lrs[bottom]), 3),
            "end_lr": significant(end_lr, 3),
        },
        noise=noise,
        snr=snr,
        reliability=level,
        training_movement=training_movement,
        sweep_movement=sweep_movement,
        too_low_because=because,
    )


def lr_range_test(
    ctx: DiagnosisContext,
    iters: int = DEFAULT_ITERS,
    start_lr: float | None = None,
    end_lr: float | None = None,
    repeats: int = 1,
) -> RangeTest:
    """Sweep (`repeats` times, each over another epoch's data order) and analyse.

    With repeats, the suggestion is the geometric median of the sweeps' suggestions, the verdict
    the most common one, and `spread_decades` how far apart the suggestions lie.
    """
    schedule_sum = float(sum(ctx.schedule.all_steps()))
    configured = ctx.learning_rate
    tests = [
        analyse(run_sweep(ctx, iters, start_lr, end_lr, epoch=epoch), configured, schedule_sum)
        for epoch in range(1, repeats + 1)
    ]
    first = tests[0]
    if repeats == 1:
        return first
    verdict = Counter(t.verdict for t in tests).most_common(1)[0][0]
    suggestions = [t.suggested_lr for t in tests if t.suggested_lr is not None]
    suggested = None
    spread = None
    if verdict != "not-lr" and suggestions:
        logs = [math.log10(s) for s in suggestions]
        suggested = 10 ** statistics.median(logs)
        spread = round(max(logs) - min(logs), 3)
    return dataclasses.replace(
        first,
        verdict=verdict,
        suggested_lr=suggested,
        warmup_start_lr=None if suggested is None else suggested / BELOW_PEAK,
        repeats=[
            {
                "suggested_lr": significant(t.suggested_lr, 2),
                "verdict": t.verdict,
                "stop_reason": t.sweep.stop_reason,
            }
            for t in tests
        ],
        spread_decades=spread,
    )
