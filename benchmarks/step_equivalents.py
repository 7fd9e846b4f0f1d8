"""A cold `quad-doctor diagnose` of the embedded default, in training steps of the same default.

Each repeat runs, alternated, in fresh processes (the dataset cache is warmed first):

- `quad-doctor diagnose --json` on the default: the report's per-check seconds (what its own
  report says the checks took) and the whole process's wall time;
- a training run of the default for 2 epochs without the doctor: the median wall time between
  the ends of consecutive steps (the first step of each epoch left out).

A check's cost in steps is its seconds over that repeat's median step, so both sides share the
machine's mood of the moment. Goal: the checks together ≤ 150 training-step equivalents.

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
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quad_doctor.trainer.build import dataset_path
from quad_doctor.trainer.config import load_config

GOAL_STEPS = 150
BIN = Path(sys.executable).parent

STEP_TIMER = """
import io, json, statistics, sys, tempfile, time
sys.path.insert(0, {benchmarks!r})
from live_overhead import StepClock, train
from quad_doctor.trainer.config import load_config, patched_config
clock = StepClock()
train(patched_config(load_config(), {{"train.num_epochs": 2}}), [clock])
print(json.dumps(statistics.median(clock.times.values())))
"""


def cold_diagnose(workdir: Path) -> tuple[dict[str, float], float]:
    """Each check's seconds from the report of a fresh `quad-doctor diagnose`, and its wall time."""
    report = workdir / "report.json"
    started = time.perf_counter()
    subprocess.run(
        [BIN / "quad-doctor", "diagnose", "--json", report, "--run-dir", workdir / "run"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    checks = json.loads(report.read_text())["checks"]
    return {check["name"]: check["duration_s"] for check in checks}, wall


def step_seconds() -> float:
    """The median training step of the default, in a fresh process without the doctor."""
    code = STEP_TIMER.format(benchmarks=str(Path(__file__).parent))
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=os.environ
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dataset_path(load_config())  # generate the default once, outside every timing
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            checks, wall = cold_diagnose(Path(tmp))
            runs.append((checks, wall, step_seconds()))
    table = Table(title=f"cold `quad-doctor diagnose` of the default, {args.repeats} repeats")
    table.add_column("check")
    table.add_column("median s", justify="right")
    table.add_column("median steps", justify="right")
    for name in runs[0][0]:
        seconds = statistics.median(checks[name] for checks, _, _ in runs)
        steps = statistics.median(checks[name] / step for checks, _, step in runs)
        table.add_row(name, f"{seconds:.2f}", f"{steps:.0f}")
    totals = [sum(checks.values()) for checks, _, _ in runs]
    steps = [total / step for total, (_, _, step) in zip(totals, runs, strict=True)]
    table.add_row(
        "all checks",
        f"{statistics.median(totals):.2f}",
        f"{statistics.median(steps):.0f}",
        style="bold",
    )
    table.add_row(
        "whole process, wall", f"{statistics.median(wall for _, wall, _ in runs):.2f}", ""
    )
    table.add_row(
        "training step (ms)", f"{1000 * statistics.median(step for _, _, step in runs):.1f}", ""
    )
    verdict = "met" if statistics.median(steps) <= GOAL_STEPS else "missed"
    table.caption = (
        "steps per repeat: "
        + ", ".join(f"{s:.0f}" for s in steps)
        + f"; goal ≤ {GOAL_STEPS}: {verdict}"
    )
    Console().print(table)


if __name__ == "__main__":
    main()
