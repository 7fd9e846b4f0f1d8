"""The live doctor's cost on step time in PyTorch Lightning: `DoctorCallback` on and off.

Measured as benchmarks/live_overhead.py measures the embedded trainer's doctor, on the same
model: the embedded default (the quadmodal model, SupCon, AdamW, the stratified sampler's loader,
the per-step cosine schedule) inside a LightningModule, one process on the CPU. Whole runs differ
by more than the 2 % to be resolved, so the doctor is switched on and off within each run: its
step hooks run in blocks of 8 steps and are skipped in the blocks between (the doctor's step
clock is paused at each block's start, so its budget sees real step times), and every step's
time is credited to its block. A step's time is the wall time between the ends of consecutive
steps, measured by a callback that runs after the doctor's, so it holds everything a step costs:
the batch, forward, backward, the optimizer, every callback, Lightning's own loop. The first step
of each epoch is left out. Each on block's mean step time is divided by the next off block's; the
overhead is the median of these ratios over all runs - 1. Goal: ≤ 2 %. "own" is the doctor's
own clock per step (the Monitor's, as live_overhead.py shows it; the callback's reading of the
batch and the loss is outside it). Whole runs with and without the doctor, alternated, are shown
too.

    .venv/bin/python benchmarks/live_overhead_lightning.py [--runs 5] [--epochs 4] [--threads N]

`--threads 1` keeps torch's threads from fighting other processes for a shared machine's cores
(two oversubscribed OpenMP pools slow a step tenfold); the step is then longer, so the same
doctor costs a smaller share of it.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from live_overhead import BLOCK, block_ratios, doctor_on, print_tables

from quad_doctor.integrations.lightning import DoctorCallback
from quad_doctor.live import Monitor
from quad_doctor.trainer.config import load_config, patched_config
from quad_doctor.trainer.embedded import embedded_setup, quad_module_of
from quad_doctor.trainer.setup import TrainingSetup


class QuadModule(pl.LightningModule):
    """The embedded trainer's pieces as a user would write them in Lightning."""

    def __init__(self, setup: TrainingSetup) -> None:
        super().__init__()
        self.model = setup.model
        self.loss_fn = setup.loss_fn  # the doctor finds it here
        self.setup_pieces = setup

    def training_step(self, batch, batch_idx):
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        features = self.model(**inputs)
        loss = self.loss_fn(features, batch["labels"])
        return {"loss": loss, "features": features.detach()}

    def configure_optimizers(self):
        optimizer = self.setup_pieces.optimizer(self.model.parameters())
        scheduler = self.setup_pieces.scheduler(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class StepClock(pl.Callback):
    """Wall time between the ends of consecutive steps within an epoch, by step."""

    def __init__(self) -> None:
        self.times: dict[int, float] = {}
        self.last: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.times[trainer.global_step - 1] = now - self.last
        self.last = now


class Blocks(pl.Callback):
    """The doctor with its step hooks on in even blocks of `BLOCK` steps, off in odd ones."""

    def __init__(self, doctor: DoctorCallback) -> None:
        self.doctor = doctor

    def on_train_start(self, trainer, pl_module) -> None:
        self.doctor.on_train_start(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.doctor.on_train_end(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.doctor.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.doctor.on_train_epoch_end(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if doctor_on(step):
            if step % BLOCK == 0 and self.doctor.monitor is not None:
                self.doctor.monitor.pause()  # the off block before is not one step
            self.doctor.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if doctor_on(trainer.global_step):
            self.doctor.on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if doctor_on(trainer.global_step - 1):  # the step just taken
            self.doctor.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def train(config, callbacks: list[pl.Callback]) -> None:
    trainer = pl.Trainer(
        max_epochs=config.train.num_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    setup = embedded_setup(config)
    trainer.fit(QuadModule(setup), setup.train_loader)


def doctor(run_dir: str) -> DoctorCallback:
    # grouped as the embedded trainer's doctor groups the same model
    return DoctorCallback(
        Path(run_dir) / "doctor",
        quiet=True,
        module_of=lambda name: quad_module_of(name.removeprefix("model.")),
    )


def blocks_run(config) -> tuple[list[float], float, float, Monitor]:
    """One run with the doctor on and off in alternate blocks: the ratio of each on block's mean
    step time to the next off block's, the mean step ms on and off, and the doctor."""
    clock = StepClock()
    with tempfile.TemporaryDirectory() as run_dir:
        blocks = Blocks(doctor(run_dir))
        train(config, [blocks, clock])
    return (*block_ratios(clock), blocks.doctor.monitor)


def whole_run(config, with_doctor: bool) -> float:
    """Median step ms of one run, with or without the doctor."""
    clock = StepClock()
    with tempfile.TemporaryDirectory() as run_dir:
        train(config, [doctor(run_dir), clock] if with_doctor else [clock])
    return 1000 * statistics.median(clock.times.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Lightning's advice on workers and loggers
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    config = patched_config(load_config(), {"train.num_epochs": args.epochs})
    whole_run(config, with_doctor=False)  # warm-up: the dataset, first-touch allocations
    title = (
        f"DoctorCallback on/off in blocks of {BLOCK} steps, {args.epochs} epochs per run, "
        f"embedded default model in Lightning, {torch.get_num_threads()} torch threads"
    )
    runs = (blocks_run(config) for _ in range(args.runs))
    print_tables(title, runs, lambda with_doctor: whole_run(config, with_doctor))


if __name__ == "__main__":
    main()
