"""Trainer throughput versus a plain hand-written PyTorch loop over the same model and data.

Both train the embedded default for the same epochs from the same initial weights, alternated in one
run. Each loop's time per iteration is measured from one step's end to the next, so it counts all
the per-step work (the trainer's schedule, callbacks and progress bar) and none of the per-epoch
validation, which the plain loop does not do; medians resist the noise of a shared machine.

    .venv/bin/python benchmarks/trainer_throughput.py [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

import torch
from rich.console import Console
from rich.table import Table

from quad_doctor.trainer.build import (
    build_dataset,
    build_loss,
    build_model,
    build_optimizer,
    build_sampler,
)
from quad_doctor.trainer.callbacks import Callback
from quad_doctor.trainer.config import load_config
from quad_doctor.trainer.loop import Trainer


def plain_loop(config, epochs: int) -> list[float]:
    """Seconds per iteration of the simplest correct loop: batch, forward, loss, backward, step."""
    dataset = build_dataset(config)
    sampler = build_sampler(config, dataset)
    model = build_model(config, dataset)
    optimizer = build_optimizer(config, model)
    loss_fn = build_loss(config)
    iterations = []
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)
        last = time.perf_counter()
        for rows in sampler:
            batch = dataset.batch(rows)
            loss = loss_fn(batch.forward(model), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.loss.backward()
            optimizer.step()
            now = time.perf_counter()
            iterations.append(now - last)
            last = now
    return iterations


class IterationClock(Callback):
    """Time from one batch end to the next within an epoch: everything the loop does per step."""

    def __init__(self) -> None:
        self.iterations: list[float] = []
        self.last: float | None = None

    def on_train_epoch_start(self, trainer, epoch) -> None:
        self.last = time.perf_counter()

    def on_train_batch_end(self, trainer, batch, features, output, step) -> None:
        now = time.perf_counter()
        self.iterations.append(now - self.last)
        self.last = now


def trainer_loop(config, epochs: int) -> list[float]:
    """Seconds per iteration of `Trainer.fit` (progress bar, schedule, callbacks included)."""
    clock = IterationClock()
    trainer = Trainer(config, [clock], console=Console(file=io.StringIO(), width=120))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer.fit(run_dir)
    return clock.iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = load_config(overrides=[f"train.num_epochs={args.epochs}"])
    build_dataset(config)  # generate the embedded dataset before timing anything
    results: dict[str, list[float]] = {"plain loop": [], "quad-doctor Trainer": []}
    for _ in range(args.repeats):
        results["plain loop"] += plain_loop(config, args.epochs)
        results["quad-doctor Trainer"] += trainer_loop(config, args.epochs)
    table = Table(title=f"training throughput, {args.epochs} epochs x {args.repeats} runs each")
    for column in ("loop", "iterations", "median ms/iteration", "samples/s", "throughput ratio"):
        table.add_column(column)
    plain = statistics.median(results["plain loop"])
    for name, values in results.items():
        median = statistics.median(values)
        table.add_row(
            name,
            str(len(values)),
            f"{1000 * median:.2f}",
            f"{config.train.batch_size / median:,.0f}",
            f"{plain / median:.3f}",
        )
    Console().print(table)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
