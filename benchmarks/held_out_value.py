"""What the LR sweep's held-out batch buys: the same sweeps read from their training loss instead.

The LR range test measures one fixed held-out batch after every step (a forward pass, about a third
of a training step). The peers read the training loss of each step instead, smoothed, at no extra
cost. This benchmark runs the sweep on the embedded default for each seed, with its stratified
batches (every class in every batch) and with random ones, and on planted faults, then analyses
each sweep three times: from its held-out curve (what the check does), from its debiased-EMA
training loss, and from its raw training loss (median-filtered by the analysis like the held-out
curve), which is what dropping the held-out forward would leave. The sweep's stopping rules read
the held-out curve in all three, so the last two columns are, if anything, flattered.

For each: the verdict on the configured learning rate, the suggestion and the reliability; over
the healthy seeds, how far the suggestions spread (decades) and how many verdicts are `ok`.

    .venv/bin/python benchmarks/held_out_value.py [--seeds 0 1 2 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from rich.console import Console
from rich.table import Table

from quad_doctor.context import DiagnosisContext
from quad_doctor.lr_range import RangeTest, analyse, run_sweep
from quad_doctor.trainer.config import load_config

# Planted faults and the verdict the check gives them.
FAULTS = {
    "single-class batches (train.sampler=sequential)": ["train.sampler=sequential"],
    "learning rate 30x the valley (train.learning_rate=0.03)": ["train.learning_rate=0.03"],
}


def three(overrides: list[str]) -> tuple[RangeTest, RangeTest, RangeTest]:
    """One sweep analysed from its held-out curve, its smoothed and its raw training loss."""
    ctx = DiagnosisContext(load_config(overrides=overrides))
    sweep = run_sweep(ctx)
    movement = float(sum(ctx.schedule.all_steps()))
    return tuple(
        analyse(dataclasses.replace(sweep, loss=curve), ctx.learning_rate, movement)
        for curve in (sweep.loss, sweep.smoothed, sweep.train_loss)
    )


def cell(test: RangeTest) -> str:
    suggestion = f"{test.suggested_lr:.2g}" if test.suggested_lr else "-"
    return f"{test.verdict} · {suggestion} · {test.reliability}"


def spread(tests: list[RangeTest]) -> str:
    lrs = [t.suggested_lr for t in tests if t.suggested_lr]
    if len(lrs) < 2:
        return "-"
    return f"{math.log10(max(lrs) / min(lrs)):.2f} decades"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    table = Table(title="the LR sweep analysed two ways: verdict · suggestion · reliability")
    table.add_column("setup")
    table.add_column("held-out batch (the check)")
    table.add_column("smoothed training loss")
    table.add_column("raw training loss")
    groups: dict[str, list[tuple[RangeTest, ...]]] = {"stratified": [], "random": []}
    for sampler, runs in groups.items():
        for seed in args.seeds:
            tests = three([f"train.seed={seed}", f"train.sampler={sampler}"])
            runs.append(tests)
            table.add_row(f"{sampler} batches, seed {seed}", *map(cell, tests))
    for name, overrides in FAULTS.items():
        table.add_row(name, *map(cell, three(overrides)))
    for sampler, runs in groups.items():
        table.add_row(
            f"{sampler}: `ok` verdicts",
            *(f"{sum(t[i].verdict == 'ok' for t in runs)}/{len(runs)}" for i in range(3)),
            style="bold",
        )
        table.add_row(
            f"{sampler}: spread of suggestions",
            *(spread([t[i] for t in runs]) for i in range(3)),
            style="bold",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
