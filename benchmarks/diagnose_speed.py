"""Full `diagnose` on the embedded default versus 3 training epochs of the same config.

Both are measured in one run, alternated, from a cold start of the trainer's pieces (the dataset
cache is warmed first, since both would generate it): diagnosis from building its context to the
ranked report (every check, remedies verified), training from building the `Trainer` to the end
of `fit` with `train.num_epochs = 3` (validation included). Goal: ratio ≤ 1.0 and diagnose ≤ 20 s.

    .venv/bin/python benchmarks/diagnose_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

from rich.console import Console
from rich.table import Table

from quad_doctor.context import DiagnosisContext
from quad_doctor.engine import diagnose
from quad_doctor.trainer.build import dataset_path
from quad_doctor.trainer.config import load_config, patched_config
from quad_doctor.trainer.loop import Trainer

GOAL_RATIO = 1.0
GOAL_S = 20.0
TRAIN_EPOCHS = 3


def time_diagnose(config) -> tuple[float, dict[str, float]]:
    """Seconds for a whole diagnosis, and each check's own seconds."""
    started = time.perf_counter()
    report = diagnose(config, ctx=DiagnosisContext(config))
    return time.perf_counter() - started, {run.name: run.duration_s for run in report.checks}


def time_training(config) -> float:
    """Seconds to build the trainer and train it for `TRAIN_EPOCHS` epochs."""
    config = patched_config(config, {"train.num_epochs": TRAIN_EPOCHS})
    started = time.perf_counter()
    trainer = Trainer(config, console=Console(file=io.StringIO()), show_progress=False)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer.fit(run_dir)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = load_config()
    dataset_path(config)  # generate the embedded default once, outside both timings
    diagnosis, training, per_check = [], [], []
    for _ in range(args.repeats):
        seconds, checks = time_diagnose(config)
        diagnosis.append(seconds)
        per_check.append(checks)
        training.append(time_training(config))
    diagnose_s, train_s = statistics.median(diagnosis), statistics.median(training)
    table = Table(title=f"diagnose vs {TRAIN_EPOCHS} training epochs, embedded default")
    for column in ("measure", "median s", "runs s"):
        table.add_column(column)
    table.add_row("diagnose", f"{diagnose_s:.2f}", " ".join(f"{s:.2f}" for s in diagnosis))
    table.add_row(
        f"train {TRAIN_EPOCHS} epochs", f"{train_s:.2f}", " ".join(f"{s:.2f}" for s in training)
    )
    table.add_row(
        "ratio",
        f"{diagnose_s / train_s:.2f}",
        f"goal ≤ {GOAL_RATIO} and diagnose ≤ {GOAL_S:.0f} s",
    )
    checks = Table(title="time per check (median s)")
    checks.add_column("check")
    checks.add_column("s", justify="right")
    for name in per_check[0]:
        checks.add_row(name, f"{statistics.median(run[name] for run in per_check):.2f}")
    console = Console()
    console.print(table)
    console.print(checks)


if __name__ == "__main__":
    main()
