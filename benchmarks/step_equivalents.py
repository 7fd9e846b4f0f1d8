"""A cold `quad-doctor diagnose` of the embedded default, in training steps of the same default.

Each repeat runs, alternated, in fresh processes (the dataset cache is warmed first):

- `quad-doctor diagnose --json` on the default: the report's per-check seconds (what its own
  report says the checks took) and the whole process's wall time;
- a training run of the default for 2 epochs without the doctor: the median wall time between
  the ends of consecutive steps (the first step of each epoch left out).

A check's cost in steps is its seconds over that repeat's median step, so both sides share the
machine's mood of the moment. Goal: the checks together ≤ 150 training-step equivalents.

A second table is the floor no diagnose running these checks can go below, measured in the same
repeat: the LR sweep's training steps (as many as its report says it took), the held-out forward
it measures after each (timed warm, after the training run), gradient-flow's training steps (its
probe and its overfit, from the report's `measurements`), and torch's own imports on first
use, which a fresh process pays in its first MultiheadAttention forward (the symbolic-shapes
module and sympy) and its first optimizer (torch._dynamo), each timed in a fresh process.

    .venv/bin/python benchmarks/step_equivalents.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quad_doctor.trainer.build import dataset_path
from quad_doctor.trainer.config import load_config

GOAL_STEPS = 150
BIN = Path(sys.executable).parent

STEP_TIMER = """
import io, json, statistics, sys, tempfile, time
import torch
sys.path.insert(0, {benchmarks!r})
from live_overhead import StepClock, train
from quad_doctor.context import DiagnosisContext
from quad_doctor.trainer.config import load_config, patched_config
clock = StepClock()
train(patched_config(load_config(), {{"train.num_epochs": 2}}), [clock])
# the LR sweep's held-out measurement, warm: ctx.step_loss under no_grad on one batch
ctx = DiagnosisContext(load_config())
model, probe = ctx.model_copy().train(), ctx.batch(ctx.epoch_batches()[0])
held = []
for _ in range(25):
    started = time.perf_counter()
    with torch.no_grad():
        ctx.step_loss(model, probe).item()
    held.append(time.perf_counter() - started)
print(json.dumps([statistics.median(clock.times.values()), statistics.median(held[5:])]))
"""

# torch's own imports on first use, which the probes pay in a fresh process: `torch._check` (in
# MultiheadAttention's forward) imports the symbolic-shapes module and sympy, and an optimizer's
# first `add_param_group`/`step` imports torch._dynamo.
FIRST_USE_IMPORTS = """
import json, time, torch
started = time.perf_counter()
import torch.fx.experimental.symbolic_shapes
shapes = time.perf_counter() - started
started = time.perf_counter()
import torch._dynamo
print(json.dumps([shapes, time.perf_counter() - started]))
"""


def cold_diagnose(workdir: Path) -> tuple[dict[str, float], float, tuple[int, int]]:
    """Each check's seconds from the report of a fresh `quad-doctor diagnose`, its wall time, and
    the training steps of the LR sweep and of gradient-flow."""
    report = workdir / "report.json"
    started = time.perf_counter()
    subprocess.run(
        [BIN / "quad-doctor", "diagnose", "--json", report, "--run-dir", workdir / "run"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    data = json.loads(report.read_text())
    checks = {check["name"]: check["duration_s"] for check in data["checks"]}
    gradient_flow = data["measurements"]["gradient_flow_steps"]
    steps = data["lr_range_test"]["iterations"], gradient_flow["probe"] + gradient_flow["overfit"]
    return checks, wall, steps


def fresh(code: str) -> list[float]:
    """The JSON list a fresh Python process running `code` prints last."""
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=os.environ
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def step_seconds() -> tuple[float, float]:
    """The median training step of the default in a fresh process without the doctor, and the
    median held-out forward of the LR sweep in that process after it."""
    step, held = fresh(STEP_TIMER.format(benchmarks=str(Path(__file__).parent)))
    return step, held


@dataclass(frozen=True)
class Repeat:
    checks: dict[str, float]  # seconds per check, from the cold diagnose's report
    wall: float  # the whole diagnose process
    sweep_steps: int  # the LR sweep's training steps
    flow_steps: int  # gradient-flow's: its probe steps and its overfit
    step: float  # the median training step, seconds
    held: float  # the sweep's held-out forward, seconds
    imports: list[float]  # torch's first-use imports: symbolic shapes (+ sympy), torch._dynamo

    def floor(self) -> dict[str, float]:
        """What no diagnose with these checks can go below, in training steps."""
        return {
            "the LR sweep's training steps": self.sweep_steps,
            "its held-out forward after each": self.sweep_steps * self.held / self.step,
            "gradient-flow's training steps": self.flow_steps,
            "torch's first-use imports": sum(self.imports) / self.step,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dataset_path(load_config())  # generate the default once, outside every timing
    runs: list[Repeat] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            checks, wall, (sweep, flow) = cold_diagnose(Path(tmp))
            step, held = step_seconds()
            runs.append(Repeat(checks, wall, sweep, flow, step, held, fresh(FIRST_USE_IMPORTS)))
    console = Console()
    console.print(check_table(runs))
    console.print(floor_table(runs))


def check_table(runs: list[Repeat]) -> Table:
    """Seconds and training steps per check."""
    table = Table(title=f"cold `quad-doctor diagnose` of the default, {len(runs)} repeats")
    table.add_column("check")
    table.add_column("median s", justify="right")
    table.add_column("median steps", justify="right")
    for name in runs[0].checks:
        seconds = statistics.median(run.checks[name] for run in runs)
        steps = statistics.median(run.checks[name] / run.step for run in runs)
        table.add_row(name, f"{seconds:.2f}", f"{steps:.0f}")
    totals = [sum(run.checks.values()) for run in runs]
    steps = [total / run.step for total, run in zip(totals, runs, strict=True)]
    table.add_row(
        "all checks",
        f"{statistics.median(totals):.2f}",
        f"{statistics.median(steps):.0f}",
        style="bold",
    )
    table.add_row("whole process, wall", f"{statistics.median(run.wall for run in runs):.2f}", "")
    table.add_row("training step (ms)", f"{1000 * statistics.median(r.step for r in runs):.1f}", "")
    verdict = "met" if statistics.median(steps) <= GOAL_STEPS else "missed"
    table.caption = (
        "steps per repeat: "
        + ", ".join(f"{s:.0f}" for s in steps)
        + f"; goal ≤ {GOAL_STEPS}: {verdict}"
    )
    return table


def floor_table(runs: list[Repeat]) -> Table:
    """The work the checks cannot leave out, in training steps, against what they took."""
    table = Table(title="what a cold diagnose cannot go below, in training steps (medians)")
    table.add_column("part")
    table.add_column("steps", justify="right")
    for part in runs[0].floor():
        table.add_row(part, f"{statistics.median(run.floor()[part] for run in runs):.0f}")
    floors = [sum(run.floor().values()) for run in runs]
    took = [sum(run.checks.values()) / run.step for run in runs]
    table.add_row("floor", f"{statistics.median(floors):.0f}", style="bold")
    table.add_row("the checks took", f"{statistics.median(took):.0f}")
    table.add_row(
        "above the floor (reading, models, probe forwards)",
        f"{statistics.median(t - f for t, f in zip(took, floors, strict=True)):.0f}",
    )
    held = statistics.median(1000 * run.held for run in runs)
    imports = [statistics.median(run.imports[i] for run in runs) for i in range(2)]
    table.caption = (
        f"held-out forward {held:.1f} ms; imports: symbolic shapes and sympy "
        f"{imports[0]:.2f} s, torch._dynamo {imports[1]:.2f} s"
    )
    return table


if __name__ == "__main__":
    main()
