"""The live doctor's cost on step time: training with it against `--no-doctor`, same config.

Runs alternate (doctor, no doctor, doctor, ...) in one process on the embedded default. A step's
time is the wall time between the ends of consecutive steps, measured by a callback that runs
after the doctor's, so it holds everything one step costs: loading the batch, forward, backward,
the optimizer, every callback. The first step of each epoch (after validation) is left out. Each
run gives its median step time; the overhead is the median over pairs of doctor/no-doctor - 1.
Goal: ≤ 2 %.

    .venv/bin/python benchmarks/live_overhead.py [--pairs 6] [--epochs 2]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

from rich.console import Console
from rich.table import Table

from quad_doctor.live import LiveDoctor
from quad_doctor.trainer.build import dataset_path
from quad_doctor.trainer.callbacks import Callback
from quad_doctor.trainer.config import load_config, patched_config
from quad_doctor.trainer.loop import Trainer

GOAL = 0.02


class StepClock(Callback):
    """Wall time between the ends of consecutive steps within an epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.last: float | None = None

    def on_train_epoch_start(self, trainer, epoch) -> None:
        self.last = None

    def on_train_batch_end(self, trainer, batch, features, output, step) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


def median_step_ms(config, doctor: bool) -> tuple[float, LiveDoctor | None]:
    """Median step time of one training run, with or without the live doctor."""
    clock = StepClock()
    live = LiveDoctor() if doctor else None
    callbacks = [live, clock] if live else [clock]
    trainer = Trainer(config, callbacks, console=Console(file=io.StringIO()), show_progress=False)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer.fit(run_dir)
    return 1000 * statistics.median(clock.times), live


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    config = patched_config(load_config(), {"train.num_epochs": args.epochs})
    dataset_path(config)  # generate the embedded default once, outside the timings
    median_step_ms(config, doctor=False)  # warm-up: first-touch allocations, lazy imports
    table = Table(title=f"live doctor overhead, {args.epochs} epochs per run, embedded default")
    for column in ("pair", "no doctor ms/step", "doctor ms/step", "overhead", "doctor's own"):
        table.add_column(column, justify="right")
    ratios = []
    for pair in range(1, args.pairs + 1):
        # alternate which goes first, so a drift in machine speed does not favour one side
        order = (True, False) if pair % 2 else (False, True)
        results = {doctor: median_step_ms(config, doctor) for doctor in order}
        (with_ms, live), (without_ms, _) = results[True], results[False]
        ratios.append(with_ms / without_ms)
        assert live is not None
        table.add_row(
            str(pair),
            f"{without_ms:.2f}",
            f"{with_ms:.2f}",
            f"{with_ms / without_ms - 1:+.2%}",
            f"{live.overhead_fraction:.2%} (k={live.every})",
        )
    overhead = statistics.median(ratios) - 1
    verdict = "met" if overhead <= GOAL else "missed"
    table.add_row("median", "", "", f"{overhead:+.2%}", f"goal ≤ {GOAL:.0%}: {verdict}")
    Console().print(table)


if __name__ == "__main__":
    main()
