"""The live doctor's cost on step time: training with it against `--no-doctor`, same config.

Whole runs of the same config differ by ±10 % in median step time on this machine (measured:
20.1-25.0 ms), five times the 2 % to be resolved, so the doctor is switched on and off within
each run: its step hooks run in blocks of 8 steps and are skipped in the blocks between, and
every step's time is credited to its block. A step's time is the wall time between the ends of
consecutive steps, measured by a callback that runs after the doctor's, so it holds everything a
step costs: the batch, forward, backward, the optimizer, every callback. The first step of each
epoch (after validation) is left out. Each on block's mean step time is divided by the next off
block's (means, so the doctor's occasional expensive steps count in full); the overhead is the
median of these ratios over all runs - 1. Goal: ≤ 2 %. Whole runs with and without the
doctor, alternated, are shown too.

    .venv/bin/python benchmarks/live_overhead.py [--runs 5] [--epochs 4]
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
BLOCK = 8


class StepClock(Callback):
    """Wall time between the ends of consecutive steps within an epoch, by step."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self.last: float | None = None

    def on_train_epoch_start(self, trainer, epoch) -> None:
        self.last = None

    def on_train_batch_end(self, trainer, batch, features, output, step) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.times[step] = now - self.last
        self.last = now


class Blocks(Callback):
    """The live doctor with its step hooks on in even blocks of `BLOCK` steps, off in odd ones."""

    def __init__(self, doctor: LiveDoctor) -> None:
        self.doctor = doctor

    def on_fit_start(self, trainer) -> None:
        self.doctor.on_fit_start(trainer)

    def on_fit_end(self, trainer) -> None:
        self.doctor.on_fit_end(trainer)

    def on_train_epoch_start(self, trainer, epoch) -> None:
        self.doctor.on_train_epoch_start(trainer, epoch)

    def on_train_epoch_end(self, trainer, epoch, metrics) -> None:
        self.doctor.on_train_epoch_end(trainer, epoch, metrics)

    def on_after_backward(self, trainer, batch, output, step) -> None:
        if doctor_on(step):
            self.doctor.on_after_backward(trainer, batch, output, step)

    def on_train_batch_end(self, trainer, batch, features, output, step) -> None:
        if doctor_on(step):
            self.doctor.on_train_batch_end(trainer, batch, features, output, step)


def doctor_on(step: int) -> bool:
    return (step // BLOCK) % 2 == 0


def train(config, callbacks) -> None:
    trainer = Trainer(config, callbacks, console=Console(file=io.StringIO()), show_progress=False)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer.fit(run_dir)


def blocks_run(config) -> tuple[list[float], float, float, LiveDoctor]:
    """One run with the doctor on and off in alternate blocks: the ratio of each on block's mean
    step time to the next off block's, and the median step ms on and off."""
    clock, doctor = StepClock(), LiveDoctor()
    train(config, [Blocks(doctor), clock])
    return (*block_ratios(clock), doctor)


def block_ratios(clock: StepClock) -> tuple[list[float], float, float]:
    """Each on block's mean step time over the next off block's, and the mean ms on and off."""
    blocks: dict[int, list[float]] = {}
    for step, seconds in clock.times.items():
        blocks.setdefault(step // BLOCK, []).append(seconds)
    ratios = [
        statistics.fmean(blocks[b]) / statistics.fmean(blocks[b + 1])
        for b in sorted(blocks)
        if b % 2 == 0 and b + 1 in blocks
    ]
    on = [t for step, t in clock.times.items() if doctor_on(step)]
    off = [t for step, t in clock.times.items() if not doctor_on(step)]
    return ratios, 1000 * statistics.fmean(on), 1000 * statistics.fmean(off)


def whole_run(config, doctor: bool) -> float:
    """Median step ms of one run, with or without the doctor."""
    clock = StepClock()
    train(config, [LiveDoctor(), clock] if doctor else [clock])
    return 1000 * statistics.median(clock.times.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    config = patched_config(load_config(), {"train.num_epochs": args.epochs})
    dataset_path(config)  # generate the embedded default once, outside the timings
    whole_run(config, doctor=False)  # warm-up: first-touch allocations, lazy imports
    title = f"live doctor on/off in blocks of {BLOCK} steps, {args.epochs} epochs per run, "
    print_tables(
        title + "embedded default",
        (blocks_run(config) for _ in range(args.runs)),
        lambda with_doctor: whole_run(config, with_doctor),
    )


def print_tables(title, runs, whole_run) -> None:
    """The on/off block table over `runs` (each: block ratios, on ms, off ms, the doctor's
    Monitor) and three alternated whole-run pairs of `whole_run(with_doctor)`."""
    table = Table(title=title)
    for column in ("run", "block pairs", "off ms/step", "on ms/step", "median pair", "own"):
        table.add_column(column, justify="right")
    pooled = []
    for index, (ratios, on_ms, off_ms, monitor) in enumerate(runs, start=1):
        pooled += ratios
        own = monitor.doctor_time / monitor.steps_seen * 1000  # the doctor's own clock
        table.add_row(
            str(index),
            str(len(ratios)),
            f"{off_ms:.2f}",
            f"{on_ms:.2f}",
            f"{statistics.median(ratios) - 1:+.2%}",
            f"{own:.3f} ms/step (k={monitor.every})",
        )
    overhead = statistics.median(pooled) - 1
    verdict = "met" if overhead <= GOAL else "missed"
    table.add_row(
        "all", str(len(pooled)), "", "", f"{overhead:+.2%}", f"goal ≤ {GOAL:.0%}: {verdict}"
    )
    whole = Table(title="whole runs alternated (run-to-run noise shows here)")
    for column in ("pair", "no doctor ms/step", "doctor ms/step", "difference"):
        whole.add_column(column, justify="right")
    for pair in range(1, 4):
        order = (True, False) if pair % 2 else (False, True)
        ms = {with_doctor: whole_run(with_doctor) for with_doctor in order}
        whole.add_row(
            str(pair), f"{ms[False]:.2f}", f"{ms[True]:.2f}", f"{ms[True] / ms[False] - 1:+.2%}"
        )
    console = Console()
    console.print(table)
    console.print(whole)


if __name__ == "__main__":
    main()
