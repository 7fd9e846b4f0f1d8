"""Detection accuracy: every fault scenario of tests/fault_scenarios.toml at full size, and the
healthy default over five seeds.

For each scenario, `diagnose` runs on the embedded default with the scenario's settings; the table
shows the expected root cause, what ranked first, its severity and the time taken, then top-1
accuracy. The healthy rows count findings at error or above (goal: 0).

    .venv/bin/python benchmarks/fault_matrix.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quad_doctor.engine import diagnose
from quad_doctor.findings import Severity
from quad_doctor.trainer.config import load_config

SCENARIOS = Path(__file__).resolve().parents[1] / "tests" / "fault_scenarios.toml"


def run(overrides: list[str]):
    """The report for the embedded default with `overrides`, and the seconds it took."""
    started = time.perf_counter()
    report = diagnose(load_config(overrides=overrides))
    return report, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    console = Console(width=120)
    scenarios = tomllib.loads(SCENARIOS.read_text())["scenario"]
    faults = Table(title="fault scenarios: rank-1 finding")
    for column in ("scenario", "expected", "rank 1", "severity", "verified", "s"):
        faults.add_column(column)
    hits = 0
    for scenario in scenarios:
        report, seconds = run(scenario["set"])
        top = report.findings[0].finding if report.findings else None
        hit = top is not None and (top.check, str(top.severity)) == (
            scenario["expected"],
            scenario["severity"],
        )
        hits += hit
        verified = "-"
        if top is not None and top.verification is not None:
            verified = "yes" if top.verification.verified else "no"
        faults.add_row(
            scenario["name"],
            f"{scenario['expected']} ({scenario['severity']})",
            f"{'' if hit else '✗ '}{top.check if top else '(nothing)'}",
            str(top.severity) if top else "-",
            verified,
            f"{seconds:.1f}",
        )
    faults.caption = f"top-1 accuracy {hits}/{len(scenarios)} = {hits / len(scenarios):.0%}"
    console.print(faults)

    healthy = Table(title=f"healthy default over {args.seeds} seeds (goal: 0 at error or above)")
    for column in ("seed", "error+", "warnings", "info", "checks run", "s"):
        healthy.add_column(column)
    for seed in range(args.seeds):
        report, seconds = run([f"data.synthetic.seed={seed}", f"train.seed={seed}"])
        serious = sum(report.count(s) for s in (Severity.ERROR, Severity.CRITICAL))
        ran = sum(run.status in ("pass", "fail") for run in report.checks)
        healthy.add_row(
            str(seed),
            str(serious),
            str(report.count(Severity.WARNING)),
            str(report.count(Severity.INFO)),
            f"{ran}/{len(report.checks)}",
            f"{seconds:.1f}",
        )
    console.print(healthy)


if __name__ == "__main__":
    main()
