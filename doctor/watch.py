"""The live doctor in a plain PyTorch loop: hand it each step, and stop when it says so.

    watch = quad_doctor.Watch(model, optimizer, loss_fn=loss_fn, run_dir="runs/mine",
                              stop_on="critical")
    for epoch in range(epochs):
        for inputs, labels in loader:
            outputs = model(inputs)
            loss = loss_fn(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            if watch.step(loss, labels, outputs=outputs, epoch=epoch):
                break  # the doctor stopped training; its report is written
            optimizer.step()
    watch.close()

`step` goes between `backward()` and `optimizer.step()`: there the gradients are final and the
update not yet applied, so a NaN is caught before it reaches the weights. The run directory gets
the same `events.jsonl`, `report.json` and `report.html` as `quad-doctor train`'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn

from quad_doctor.engine import environment
from quad_doctor.findings import SEVERITIES, Report, Severity
from quad_doctor.live import Monitor, Run, non_finite_rows
from quad_doctor.trainer.errors import SetupError
from quad_doctor.trainer.rundir import new_run_dir
from quad_doctor.trainer.setup import batch_sampler_of, dataset_length, default_batch_fn


def parse_stop_on(stop_on: str | Severity | None, owner: str) -> Severity | None:
    """`stop_on` as a severity (None: never stop); a one-line `SetupError` naming the choices."""
    if stop_on is None or isinstance(stop_on, Severity):
        return stop_on
    if isinstance(stop_on, str) and stop_on.lower() in SEVERITIES:
        return Severity.parse(stop_on)
    if isinstance(stop_on, str) and stop_on.lower() == "never":
        return None
    raise SetupError(
        f"{owner}: stop_on={stop_on!r} is not a severity; use one of "
        f"{', '.join(SEVERITIES)} or None"
    )


def open_run_dir(run_dir: str | Path | None, owner: str) -> Path:
    """The run directory, created and proven writable now (not at the first event, hours in)."""
    if run_dir is not None and not isinstance(run_dir, str | os.PathLike):
        raise SetupError(f"{owner}: run_dir must be a path, got {type(run_dir).__name__}")
    try:
        path = new_run_dir(run_dir)
        probe = path / f".quad-doctor-write-test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        where = run_dir if run_dir is not None else "runs/"
        raise SetupError(
            f"{owner}: run_dir {where}: cannot write there ({error.strerror or error})"
        ) from None
    return path


def batch_labels(batch: Any, batch_fn: Callable[[Any], tuple[Any, Any]] | None = None):
    """A batch's inputs and labels, by `batch_fn` or the `TrainingSetup` conventions: `(x, y)`,
    or a dict with its labels under label/labels/target/targets."""
    return (batch_fn or default_batch_fn)(batch)


def describe_loop(
    kind: str,
    model: nn.Module | None,
    optimizer: Any,
    loss_fn: Any,
    device: torch.device,
    loader: Any = None,
) -> dict[str, Any]:
    """The report's header for a loop the doctor did not build."""
    dataset = getattr(loader, "dataset", None)
    return {
        **({"dataset": type(dataset).__name__} if dataset is not None else {}),
        **({"num_samples": dataset_length(dataset)} if dataset is not None else {}),
        **({"batch_sampler": sampler_name(loader)} if sampler_name(loader) else {}),
        "setup": kind,
        "model": type(model).__name__ if model is not None else None,
        "parameters": sum(p.numel() for p in model.parameters()) if model is not None else None,
        "loss": None
        if loss_fn is None
        else getattr(loss_fn, "__qualname__", type(loss_fn).__name__),
        "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        "device": str(device),
        "environment": environment(device),
    }


def sampler_name(loader: Any) -> str:
    """The class of what yields the loader's batches ("" for none)."""
    sampler = batch_sampler_of(loader)
    if sampler is None:
        return ""
    inner = getattr(sampler, "sampler", None)  # torch's BatchSampler wraps the one that orders
    if type(sampler).__name__ == "BatchSampler" and inner is not None:
        return f"BatchSampler({type(inner).__name__})"
    return type(sampler).__name__


def model_device(model: nn.Module | None) -> torch.device:
    """Where the model's parameters are (CPU for none)."""
    parameter = next(model.parameters(), None) if model is not None else None
    return parameter.device if parameter is not None else torch.device("cpu")


def as_labels(labels: Any, owner: str) -> Tensor | np.ndarray:
    """Class labels as integers, one per sample; a one-line `SetupError` otherwise."""
    if isinstance(labels, Tensor):
        if labels.is_floating_point() or labels.ndim != 1:
            raise SetupError(
                f"{owner}: labels must be one integer class per sample, got a "
                f"{labels.dtype} tensor of shape {tuple(labels.shape)}"
            )
        return labels
    array = np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise SetupError(
            f"{owner}: labels must be one integer class per sample, got {type(labels).__name__}"
            f" of shape {array.shape} ({array.dtype})"
        )
    return array


class Watch:
    """The live doctor in your own training loop (see the module's docstring for the loop).

    `model` and `optimizer`: watched for gradients, update sizes and the LR they apply (either
    may be None: the rules that need it are then off). `loss_fn(outputs, labels)`: probed for
    the loss's floor and collapse value, as `diagnose` probes it (without it, no loss bounds).
    `train_loader`: named in the report, and its length is an epoch's steps.
    `run_dir`: where events and reports go (default `runs/<timestamp>`). `stop_on`: "critical",
    "error", "warning" or None; `step` returns True from the first finding at or above it.
    `steps_per_epoch`, `num_epochs`, `warmup_steps`: what the rules judge windows and plateaus
    against, when known. `quiet`: no event lines on stderr.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        loss_fn: Callable[[Any, Tensor], Tensor] | None = None,
        train_loader: Any = None,
        run_dir: str | Path | None = None,
        stop_on: str | Severity | None = None,
        steps_per_epoch: int | None = None,
        num_epochs: int | None = None,
        warmup_steps: int = 0,
        batch_fn: Callable[[Any], tuple[Any, Any]] | None = None,
        class_names: Sequence[str] | None = None,
        quiet: bool = False,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        if model is not None and not isinstance(model, nn.Module):
            raise SetupError(
                f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise SetupError(
                f"{owner}: optimizer must be a torch.optim.Optimizer, got "
                f"{type(optimizer).__name__}"
            )
        if loss_fn is not None and not callable(loss_fn):
            raise SetupError(f"{owner}: loss_fn must be callable, got {type(loss_fn).__name__}")
        severity = parse_stop_on(stop_on, owner)
        self.monitor = Monitor(stop_on=severity)
        self.optimizer = optimizer
        self.batch_fn = batch_fn
        self.owner = owner
        device = model_device(model)
        context = describe_loop(
            f"plain loop ({owner})", model, optimizer, loss_fn, device, train_loader
        )
        if steps_per_epoch is None and train_loader is not None:
            steps_per_epoch = dataset_length(train_loader)
        if class_names is not None:
            context["classes"] = list(class_names)
        self.monitor.start(
            Run(
                run_dir=open_run_dir(run_dir, owner),
                model=model,
                loss_fn=loss_fn,
                steps_per_epoch=steps_per_epoch or 0,
                sampler=sampler_name(train_loader),
                num_epochs=num_epochs,
                warmup_steps=warmup_steps,
                seed=seed,
                device=device,
                context=context,
                say=None if quiet else Console(stderr=True).print,
            )
        )
        self.steps = 0
        self.epoch = 0
        self.closed = False
        self._previous: tuple[int, Tensor | None] | None = None
        self._report: Report | None = None

    @property
    def run_dir(self) -> Path:
        return self.monitor.run_dir

    @property
    def stop_reason(self) -> str:
        """Why the doctor stopped training ("" while it has not)."""
        return self.monitor.stop_reason

    def step(
        self,
        loss: Tensor | float,
        labels: Any = None,
        *,
        batch: Any = None,
        outputs: Tensor | None = None,
        inputs: Any = None,
        epoch: int | None = None,
        sample_ids: Sequence[Any] | None = None,
    ) -> bool:
        """One training step, between `loss.backward()` and `optimizer.step()`; True when the
        doctor asks to stop (skip the update and leave the loop: the report is written).

        `labels`: the batch's class labels; or pass `batch` and they are taken from it (`(x, y)`,
        or a dict with label/labels/target/targets). `outputs`: what the loss saw (the
        embeddings); `inputs`: the model's inputs, searched for NaN/Inf when the loss goes
        non-finite. `epoch`: the epoch, when the loop counts them. `sample_ids`: the batch's
        samples as findings should name them (default: their positions in the batch).
        """
        if self.closed:
            raise SetupError(f"{self.owner}.step: called after close()")
        if labels is None:
            if batch is None:
                raise SetupError(f"{self.owner}.step: pass labels= or batch=")
            batch_inputs, labels = batch_labels(batch, self.batch_fn)
            inputs = batch_inputs if inputs is None else inputs
        labels = as_labels(labels, f"{self.owner}.step")
        if epoch is not None and epoch != self.epoch:
            self.end_epoch()
            self.epoch = epoch
        value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        monitor = self.monitor
        if self._previous is not None:  # the last step's update is applied by now
            monitor.post_update(*self._previous)
        applied = [g["lr"] for g in self.optimizer.param_groups] if self.optimizer else [math.nan]
        ids = [str(i) for i in (range(len(labels)) if sample_ids is None else sample_ids)]
        monitor.pre_update(
            self.steps,
            self.epoch,
            value,
            labels,
            applied,
            outputs=outputs,
            inspect=lambda ranks: (ids, non_finite_rows(inputs, ids)),
        )
        self._previous = (self.steps, outputs)
        self.steps += 1
        if monitor.stop_reason and self._report is None:
            self._previous = None  # the loop skips this update
            self._report = monitor.finish("stopped")
        return bool(monitor.stop_reason)

    def end_epoch(self) -> None:
        """Judge what is pending and rewrite `report.json` (`step(epoch=)` calls it for you)."""
        if self._previous is not None:
            self.monitor.post_update(*self._previous)
            self._previous = None
        self.monitor.pause()
        self.monitor.epoch_end()

    def close(self, status: str | None = None) -> Report:
        """Judge the last steps and write `report.json` and `report.html`; the report."""
        if self.closed:
            return self.report()
        self.closed = True
        if self._previous is not None:
            self.monitor.post_update(*self._previous)
            self._previous = None
        self._report = self.monitor.finish(status)
        return self._report

    def report(self) -> Report:
        """The live report so far, ranked as `diagnose` ranks it."""
        return self.monitor.report()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.close("interrupted" if kind is not None else None)
