"""What the LR sweep's held-out batch buys: the same sweeps read from their training loss instead.

The LR range test measures one fixed held-out batch after every step (a forward pass, about a third
of a training step). The peers read the training loss of each step instead, smoothed, at no extra
cost. This benchmark runs the sweep on the embedded default for each seed, with its stratified
batches (every class in every batch) and with random ones, and on planted faults, then analyses
each sweep three times: from its held-out curve (what the check does), from its debiased-EMA
training loss, and from its raw training loss (median-filtered by the analysis like the held-out
curve), which is what dropping the held-out forward would leave. The sweep's stopping rules read
the held-out curve in all three. A fourth column runs the sweep without the held-out batch at
all: its stops read the running median of 3 of the training loss, with the check's thresholds.

For each: the verdict on the configured learning rate, the suggestion and the reliability; over
the healthy seeds, how far the suggestions spread (decades) and how many verdicts are `ok`.

    .venv/bin/python benchmarks/held_out_value.py [--seeds 0 1 2 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time

from rich.console import Console
from rich.table import Table

from quad_doctor.context import DiagnosisContext, isolated_rng
from quad_doctor.lr_range import (
    COLLAPSE_STEPS,
    DEFAULT_ITERS,
    RangeTest,
    Sweep,
    analyse,
    came_back,
    default_range,
    run_sweep,
    sweep_lrs,
)
from quad_doctor.trainer.config import load_config
from quad_doctor.trainer.losses import supcon_collapse_value

# Planted faults and the verdict the check gives them.
FAULTS = {
    "single-class batches (train.sampler=sequential)": ["train.sampler=sequential"],
    "learning rate 30x the valley (train.learning_rate=0.03)": ["train.learning_rate=0.03"],
}


def four(overrides: list[str]) -> tuple[RangeTest, ...]:
    """One sweep analysed from its held-out curve, its smoothed and its raw training loss; and a
    sweep without the held-out batch, its stops reading the training loss."""
    ctx = DiagnosisContext(load_config(overrides=overrides))
    sweep = run_sweep(ctx)
    movement = float(sum(ctx.schedule.all_steps()))
    return (
        *(
            analyse(dataclasses.replace(sweep, loss=curve), ctx.learning_rate, movement)
            for curve in (sweep.loss, sweep.smoothed, sweep.train_loss)
        ),
        analyse(training_loss_sweep(ctx), ctx.learning_rate, movement),
    )


def training_loss_sweep(ctx: DiagnosisContext) -> Sweep:
    """The sweep with no held-out forward: each step's own loss (before its update, on a batch
    the sweep has not trained on while its first pass through the epoch lasts) is the curve, and
    the stops read its running median of 3 with the check's thresholds."""
    started = time.perf_counter()
    first, last = default_range(ctx)
    model = ctx.model_copy().train()
    optimizer = ctx.optimizer_for(model)
    batches = ctx.epoch_batches()
    collapse = supcon_collapse_value(ctx.batch_size)
    losses: list[float] = []
    lrs: list[float] = []
    best, reference, returned, reason = math.inf, math.inf, 0, "end"
    with isolated_rng(ctx.seed, ctx.device):
        for step, lr in enumerate(sweep_lrs(first, last, DEFAULT_ITERS)):
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = ctx.step_loss(model, ctx.batch(batches[step % len(batches)]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not math.isfinite(loss.item()):
                reason = "nan"
                break
            lrs.append(lr)
            losses.append(loss.item())
            level = statistics.median(losses[-3:])
            best = min(best, level)
            if step == 2:
                reference = min(level, collapse)
            back = came_back(best, level, reference, collapse)
            returned = returned + 1 if back else 0
            if returned >= COLLAPSE_STEPS:
                reason = back
                break
    return Sweep(
        lrs, losses, losses, losses, reason, collapse, 0, 0, len(lrs),
        time.perf_counter() - started, first,
    )  # fmt: skip


def cells(tests: tuple[RangeTest, ...]) -> list[str]:
    """verdict · suggestion · reliability of each; the steps of the first and last sweeps."""
    out = []
    for index, test in enumerate(tests):
        suggestion = f"{test.suggested_lr:.2g}" if test.suggested_lr else "-"
        steps = f" · {len(test.sweep.lr)} steps" if index in (0, len(tests) - 1) else ""
        out.append(f"{test.verdict} · {suggestion} · {test.reliability}{steps}")
    return out


def spread(tests: list[RangeTest]) -> str:
    lrs = [t.suggested_lr for t in tests if t.suggested_lr]
    if len(lrs) < 2:
        return "-"
    return f"{math.log10(max(lrs) / min(lrs)):.2f} decades"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    table = Table(title="the LR sweep analysed four ways: verdict · suggestion · reliability")
    table.add_column("setup")
    table.add_column("held-out batch (the check)")
    table.add_column("smoothed training loss")
    table.add_column("raw training loss")
    table.add_column("no held-out batch: stops on the training loss")
    groups: dict[str, list[tuple[RangeTest, ...]]] = {"stratified": [], "random": []}
    for sampler, runs in groups.items():
        for seed in args.seeds:
            tests = four([f"train.seed={seed}", f"train.sampler={sampler}"])
            runs.append(tests)
            table.add_row(f"{sampler} batches, seed {seed}", *cells(tests))
    for name, overrides in FAULTS.items():
        table.add_row(name, *cells(four(overrides)))
    for sampler, runs in groups.items():
        table.add_row(
            f"{sampler}: `ok` verdicts",
            *(f"{sum(t[i].verdict == 'ok' for t in runs)}/{len(runs)}" for i in range(4)),
            style="bold",
        )
        table.add_row(
            f"{sampler}: spread of suggestions",
            *(spread([t[i] for t in runs]) for i in range(4)),
            style="bold",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
