"""Detection accuracy on users' own code: the matrix of tests/user_scenarios/setups.py at full size.

For each scenario, `quad_doctor.diagnose` runs in-process on the setup the scenario's function
builds (its own model, loss, optimizer, schedule and sampler). The table shows the expected root
cause (healthy: nothing at warning or above), what ranked first, its severity, whether its code
change was verified on a copy of the setup, whether the rank 1 is right and the seconds the
diagnosis took; then top-1 accuracy.

    .venv/bin/python benchmarks/user_scenarios.py [--samples 6000] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import runpy
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import quad_doctor
from quad_doctor.findings import Severity

SETUPS = Path(__file__).resolve().parents[1] / "tests" / "user_scenarios" / "setups.py"


def top_finding(report):
    """The rank-1 finding when it is at warning or above, else None."""
    if report.findings and report.findings[0].finding.severity >= Severity.WARNING:
        return report.findings[0].finding
    return None


def correct(top, expected: tuple[str, str] | None) -> bool:
    """Whether the rank-1 finding is the expected check at its least severity or worse (healthy:
    no finding at warning or above)."""
    if expected is None:
        return top is None
    check, least = expected
    return top is not None and top.check == check and top.severity >= Severity.parse(least)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["QD_SCENARIO_SAMPLES"] = str(args.samples)  # read when setups.py loads
    scenarios = runpy.run_path(str(SETUPS))
    console = Console(width=140)
    table = Table(title=f"user-code scenarios at {args.samples:,} samples: rank-1 finding")
    for column in ("scenario", "expected", "rank 1", "severity", "verified", "top-1", "s"):
        table.add_column(column)
    hits = 0
    total_seconds = 0.0
    for name, expected in scenarios["EXPECTED"].items():
        setup = scenarios[name]()
        started = time.perf_counter()
        report = quad_doctor.diagnose(setup)
        seconds = time.perf_counter() - started
        total_seconds += seconds
        top = top_finding(report)
        hit = correct(top, expected)
        hits += hit
        verified = "-"
        if top is not None and top.verification is not None:
            verified = "yes" if top.verification.verified else "no"
        table.add_row(
            name,
            f"{expected[0]} ({expected[1]}+)" if expected else "healthy",
            top.check if top else "(nothing)",
            str(top.severity) if top else "-",
            verified,
            "yes" if hit else "✗ no",
            f"{seconds:.1f}",
        )
    count = len(scenarios["EXPECTED"])
    table.caption = (
        f"top-1 accuracy {hits}/{count} = {hits / count:.0%} · {total_seconds:.1f} s in all · "
        f"torch {torch.get_num_threads()} thread(s)"
    )
    console.print(table)


if __name__ == "__main__":
    main()
