"""The training loop: one visible loop, top to bottom, with callbacks at each step."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn.parallel import DistributedDataParallel

from quad_doctor.trainer.build import (
    autocast,
    build_dataset,
    build_loss,
    build_model,
    build_optimizer,
    build_sampler,
    build_schedule,
    resolve_device,
)
from quad_doctor.trainer.callbacks import Callback
from quad_doctor.trainer.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from quad_doctor.trainer.config import Config, save_config
from quad_doctor.trainer.distributed import (
    World,
    after_backward,
    average_gradients,
    gather_features,
    gather_labels,
    gather_step,
    mean_over_ranks,
)
from quad_doctor.trainer.errors import TrainingInterrupted, UsageError
from quad_doctor.trainer.evaluate import validation_accuracy
from quad_doctor.trainer.losses import SupConOutput
from quad_doctor.trainer.rundir import JsonLines


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so a resume continues exactly here."""

    epoch: int = 1  # the epoch in progress, 1-based (epoch 0 is the untrained evaluation)
    position: int = 0  # index of the next batch within the epoch
    global_step: int = 0
    epoch_loss_sum: float = 0.0
    epoch_steps: int = 0
    epoch_step_time_s: float = 0.0
    best_val_accuracy: float = -1.0


# How often a watched distributed run measures each rank's own gradient: a norm over all of them
# costs ~0.5 ms on one CPU core, and measuring before DDP averages needs a separate all-reduce.
LOCAL_GRADIENT_EVERY = 16


class Trainer:
    """Trains the quadmodal model with SupCon; building it validates config and data."""

    def __init__(
        self,
        config: Config,
        callbacks: list[Callback] | tuple[Callback, ...] = (),
        console: Console | None = None,
        show_progress: bool = True,
        world: World | None = None,
        watch_rank_gradients: bool = False,
    ) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.console = console or Console()
        self.world = world or World()
        self.show_progress = show_progress and self.world.is_main
        self.device = resolve_device(config.train.device)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
        self.dataset = build_dataset(config)
        self.train_rows = self.dataset.split_indices("train")
        self.val_rows = self.dataset.split_indices("val")
        self.sampler = build_sampler(
            config, self.dataset, rank=self.world.rank, world_size=self.world.world_size
        )
        self.model = build_model(config, self.dataset).to(self.device)
        # What runs forward: the model itself, or its DDP wrapper that averages gradients.
        self.network: torch.nn.Module = self.model
        # Distributed: each rank's own gradient norm (every 16th step when watched), measured
        # before the gradients are averaged; NaN on the other steps.
        self.rank_grad_norms: list[float] | None = None
        self.watch_rank_gradients = watch_rank_gradients
        if self.world.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = DistributedDataParallel(self.model, device_ids=ids)
        # Every rank's batch labels and local loss at the current step (set when distributed).
        self.rank_labels: list[np.ndarray] | None = None
        self.rank_losses: list[float] | None = None
        self.optimizer = build_optimizer(config, self.model)
        self.schedule = build_schedule(config, len(self.sampler))
        self.loss_fn = build_loss(config)
        self.state = TrainState()
        # A callback sets these to end training: in `on_after_backward` the step is not applied,
        # later in the step it is; either way the state is saved to `stopped_checkpoint`.
        self.should_stop = False
        self._agreed_stop = False  # distributed: some rank's callback asked to stop
        self.stop_reason = ""
        self.stopped_checkpoint: Path | None = None
        self.run_dir: Path | None = None

    # -- run directory ---------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        """Where `last.pt` and `best.pt` live."""
        assert self.run_dir is not None
        return self.run_dir / "checkpoints"

    def save(self, name: str = "last") -> Path:
        """Save everything a resume needs to `checkpoints/<name>.pt`, atomically (rank 0 only)."""
        path = self.checkpoint_dir / f"{name}.pt"
        if not self.world.is_main:
            return path
        save_checkpoint(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "state": dataclasses.asdict(self.state),
                "rng": rng_state(),
                "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
                "config": self.config.to_dict(),
            },
            path,
        )
        return path

    def _restore(self) -> None:
        checkpoint = load_checkpoint(self.checkpoint_dir / "last.pt")
        if checkpoint["config"] != self.config.to_dict():
            raise UsageError(
                f"{self.run_dir / 'config.toml'}: the config differs from the one this run was "
                "started with; resume without --config/--set or use a new --run-dir"
            )
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.state = TrainState(**checkpoint["state"])
        set_rng_state(checkpoint["rng"])
        for cb in self.callbacks:
            cb.load_state_dict(checkpoint["callbacks"].get(type(cb).__name__, {}))

    # -- training --------------------------------------------------------------------------------

    def fit(self, run_dir: str | Path, resume: bool = False) -> list[dict[str, Any]]:
        """Train for `train.num_epochs` epochs, writing metrics and checkpoints to `run_dir`."""
        self.run_dir = Path(run_dir)
        metrics = _MainOnly(JsonLines(self.run_dir / "metrics.jsonl"), self.world)
        if resume:
            self._restore()
            # Rows written after the checkpoint are recomputed: keep only the finished epochs.
            metrics.keep(lambda row: row["epoch"] < self.state.epoch)
        else:
            taken = (self.checkpoint_dir / "last.pt").exists() or metrics.path.exists()
            if taken and self.world.is_main:
                raise UsageError(
                    f"{self.run_dir}: already holds a run; use --resume or another --run-dir"
                )
            if self.world.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                save_config(self.config, self.run_dir / "config.toml")
            torch.manual_seed(self.config.train.seed)  # dropout and any other global draws
            untrained = self._validate()
            metrics.append(
                {"epoch": 0, "train_loss": None, "val_accuracy": untrained, "lr": self._lr(0)}
            )
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            with self._progress() as progress:
                self._train(metrics, progress)
            if self._stopping():
                # saved at the exact position, so `--resume` continues from the step it stopped at
                self.stopped_checkpoint = self.save("last")
        except KeyboardInterrupt:
            raise TrainingInterrupted(self.save("last")) from None
        finally:
            for cb in self.callbacks:
                cb.on_fit_end(self)
        return metrics.read()

    def _train(self, metrics: JsonLines, progress: Progress) -> None:
        config = self.config.train
        steps_per_epoch = len(self.sampler)
        task = progress.add_task(
            "train",
            total=config.num_epochs * steps_per_epoch,
            completed=self.state.global_step,
            epoch=f"{self.state.epoch}/{config.num_epochs}",
            loss="-",
            lr="-",
            rate="-",
        )
        self.model.train()
        while self.state.epoch <= config.num_epochs and not self._stopping():
            epoch = self.state.epoch
            self.sampler.set_epoch(epoch)
            batches = self.sampler.epoch_batches()
            if self.state.position == 0:
                for cb in self.callbacks:
                    cb.on_train_epoch_start(self, epoch)
            epoch_started = time.perf_counter()
            while self.state.position < len(batches) and not self._stopping():
                step = self.state.global_step
                started = time.perf_counter()
                # 1. set the learning rate this step's schedule asks for
                lr = self._lr(step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batch = self.dataset.batch(batches[self.state.position]).to(self.device)
                for cb in self.callbacks:
                    cb.on_train_batch_start(self, batch, step)
                self.optimizer.zero_grad(set_to_none=True)
                # Every 16th step of a watched distributed run, DDP leaves the gradients local
                # until this rank's own gradient norm is measured, then they are averaged.
                local = self._measures_local_gradient(step)
                with self.network.no_sync() if local else contextlib.nullcontext():
                    # 2. forward: four encoders, fusion, normalised embeddings
                    with autocast(self.config, self.device):
                        features = batch.forward(self.network)
                        # 3. loss: SupCon over the batch (every rank's batch when gathering)
                        output = self._loss(features, batch.labels)
                    # 4. backward
                    output.loss.backward()
                norm = average_gradients(self.model, self.world) if local else math.nan
                for cb in self.callbacks:
                    cb.on_after_backward(self, batch, output, step)
                if self.world.distributed:
                    self._agreed_stop, self.rank_grad_norms = after_backward(
                        self.should_stop, norm, self.world, self.device
                    )
                else:
                    self._agreed_stop = self.should_stop
                if self._agreed_stop:
                    break  # a callback saw this step go wrong: it is not applied
                # 5. optimizer step
                self.optimizer.step()
                # 6. bookkeeping, then the callbacks see the finished step
                loss = output.loss.item()
                elapsed = time.perf_counter() - started
                self.state.position += 1
                self.state.global_step += 1
                self.state.epoch_loss_sum += loss
                self.state.epoch_steps += 1
                self.state.epoch_step_time_s += elapsed
                for cb in self.callbacks:
                    cb.on_train_batch_end(self, batch, features, output, step)
                # 7. log
                progress.update(
                    task,
                    advance=1,
                    loss=f"{loss:.4f}",
                    lr=f"{lr:.2e}",
                    rate=f"{len(batch) / elapsed:,.0f}",
                )
                every = config.checkpoint_every_steps
                if every and self.state.global_step % every == 0:
                    self.save("last")
            if self.state.position < len(batches):
                break  # a callback asked to stop mid-epoch
            self._finish_epoch(metrics, progress, time.perf_counter() - epoch_started)
            shown = min(self.state.epoch, config.num_epochs)
            progress.update(task, epoch=f"{shown}/{config.num_epochs}")

    def _finish_epoch(self, metrics: JsonLines, progress: Progress, wall_s: float) -> None:
        epoch = self.state.epoch
        val_accuracy = self._validate()
        for cb in self.callbacks:
            cb.on_validation_end(self, epoch, val_accuracy)
        steps = max(1, self.state.epoch_steps)
        row = {
            "epoch": epoch,
            "train_loss": mean_over_ranks(
                self.state.epoch_loss_sum / steps, self.world, self.device
            ),
            "val_accuracy": val_accuracy,
            "lr": self._lr(self.state.global_step - 1),
            "step_time_ms": 1000 * self.state.epoch_step_time_s / steps,
            "samples_per_s": self.config.train.batch_size * steps / self.state.epoch_step_time_s,
            "steps": self.state.epoch_steps,
            "epoch_time_s": wall_s,  # the epoch's training steps, without its validation
        }
        metrics.append(row)
        progress.console.print(
            f"epoch {epoch:>3}/{self.config.train.num_epochs}  loss {row['train_loss']:.4f}  "
            f"val_acc {val_accuracy:.3f}  lr {row['lr']:.2e}  "
            f"{row['step_time_ms']:.1f} ms/step  {wall_s:.1f} s"
        )
        improved = val_accuracy > self.state.best_val_accuracy
        self.state = dataclasses.replace(
            self.state,
            epoch=epoch + 1,
            position=0,
            epoch_loss_sum=0.0,
            epoch_steps=0,
            epoch_step_time_s=0.0,
            best_val_accuracy=max(val_accuracy, self.state.best_val_accuracy),
        )
        self.save("last")
        if improved:
            self.save("best")
        for cb in self.callbacks:
            cb.on_train_epoch_end(self, epoch, row)

    def _validate(self) -> float:
        return validation_accuracy(
            self.model, self.dataset, self.train_rows, self.val_rows, self.device, self.world
        )

    def _loss(self, features: torch.Tensor, labels: torch.Tensor) -> SupConOutput:
        """SupCon on this rank's batch, or on every rank's with `dist.gather_features`."""
        if not self.world.distributed:
            return self.loss_fn(features, labels)
        if self.config.dist.gather_features:
            self.rank_labels = gather_labels(labels, self.world)
            everyone = torch.as_tensor(np.concatenate(self.rank_labels), device=labels.device)
            output = self.loss_fn(gather_features(features, self.world), everyone)
            self.rank_losses = None  # one loss over every rank's batch: the same on each
            return output
        output = self.loss_fn(features, labels)
        self.rank_labels, self.rank_losses = gather_step(labels, output.loss, self.world)
        return output

    def _measures_local_gradient(self, step: int) -> bool:
        return (
            self.world.distributed
            and self.watch_rank_gradients
            and step % LOCAL_GRADIENT_EVERY == 0
        )

    def _stopping(self) -> bool:
        """Whether to stop now: a callback asked, on any rank (agreed at the last step)."""
        return self._agreed_stop if self.world.distributed else self.should_stop

    def _lr(self, step: int) -> float:
        return self.schedule.lr_at(step)

    def _progress(self) -> Progress:
        return _StatusProgress(
            self._statuses,
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[rate]} samples/s"
            ),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.show_progress,
        )

    def _statuses(self) -> list[RenderableType]:
        statuses = (cb.progress_status(self) for cb in self.callbacks)
        return [status for status in statuses if status is not None]


class _StatusProgress(Progress):
    """A progress bar with the callbacks' status lines (the live doctor's) under it."""

    def __init__(self, statuses: Callable[[], list[RenderableType]], *columns, **options) -> None:
        self._status_lines = statuses  # before super(): it renders once while building
        super().__init__(*columns, **options)

    def get_renderables(self) -> Iterator[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield from self._status_lines()


class _MainOnly:
    """A metrics file that only rank 0 writes; every rank can read it."""

    def __init__(self, lines: JsonLines, world: World) -> None:
        self.lines = lines
        self.path = lines.path
        self.world = world

    def append(self, row: dict[str, Any]) -> None:
        if self.world.is_main:
            self.lines.append(row)

    def keep(self, predicate) -> None:
        if self.world.is_main:
            self.lines.keep(predicate)

    def read(self) -> list[dict[str, Any]]:
        return self.lines.read() if self.world.is_main else []
