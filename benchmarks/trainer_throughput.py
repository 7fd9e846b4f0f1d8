"""Trainer throughput versus a plain hand-written PyTorch loop over the same model and data.

Both train the embedded default for the same epochs from the same initial weights, alternated in one
run. The trainer's time counts everything it does per epoch except validation (which the plain loop
does not do): the schedule, callbacks, the progress bar and its checkpoint writes.

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
from quad_doctor.trainer.config import load_config
from quad_doctor.trainer.loop import Trainer


def plain_loop(config, epochs: int) -> float:
    """Samples per second of the simplest correct loop: batch, forward, loss, backward, step."""
    dataset = build_dataset(config)
    sampler = build_sampler(config, dataset)
    model = build_model(config, dataset)
    optimizer = build_optimizer(config, model)
    loss_fn = build_loss(config)
    samples = 0
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)
        for rows in sampler:
            batch = dataset.batch(rows)
            loss = loss_fn(model(batch.video, batch.audio, batch.sensor, batch.text), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.loss.backward()
            optimizer.step()
            samples += len(rows)
    return samples / (time.perf_counter() - started)


def trainer_loop(config, epochs: int) -> float:
    """Samples per second of `Trainer.fit`, validation time excluded."""
    trainer = Trainer(config, console=Console(file=io.StringIO(), width=120))
    validation_s = 0.0
    validate = trainer._validate

    def timed_validate() -> float:
        nonlocal validation_s
        started = time.perf_counter()
        accuracy = validate()
        validation_s += time.perf_counter() - started
        return accuracy

    trainer._validate = timed_validate
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        trainer.fit(run_dir)
        elapsed = time.perf_counter() - started - validation_s
    return epochs * len(trainer.sampler) * config.train.batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = load_config(overrides=[f"train.num_epochs={args.epochs}"])
    build_dataset(config)  # generate the embedded dataset before timing anything
    results: dict[str, list[float]] = {"plain loop": [], "quad-doctor Trainer": []}
    for _ in range(args.repeats):
        results["plain loop"].append(plain_loop(config, args.epochs))
        results["quad-doctor Trainer"].append(trainer_loop(config, args.epochs))
    table = Table(
        title=f"training throughput, {args.epochs} epochs x {args.repeats} alternated runs"
    )
    for column in ("loop", "median samples/s", "runs", "ratio to plain"):
        table.add_column(column)
    plain = statistics.median(results["plain loop"])
    for name, values in results.items():
        median = statistics.median(values)
        table.add_row(
            name,
            f"{median:,.0f}",
            ", ".join(f"{v:,.0f}" for v in values),
            f"{median / plain:.3f}",
        )
    Console().print(table)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
