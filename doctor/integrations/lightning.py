"""The live doctor in PyTorch Lightning: one callback.

    from quad_doctor.integrations.lightning import DoctorCallback

    trainer = lightning.Trainer(callbacks=[DoctorCallback(stop_on="critical")])
    trainer.fit(model, train_loader)

What it reads, and where:

- the labels, from each training batch: `(x, y)`, or a dict with its labels under label/labels/
  target/targets (`batch_fn=lambda batch: (inputs, labels)` for anything else);
- the loss, from what `training_step` returns: a tensor, or a dict with "loss". A dict entry
  "features" (or "embeddings") is what the loss saw: with it the doctor probes the loss's floor
  and collapse value, and watches the embeddings' spread;
- the gradients, in `on_before_optimizer_step`, where they are final (and unscaled under AMP);
- the learning rate each optimizer applies, from its param groups as it steps.

The loss it probes is `loss_fn(outputs, labels)`; without one it takes the LightningModule's own
`loss_fn` or `criterion` attribute when that is callable, and without either the loss-bounds
rules are off. `stop_on` stops training through `trainer.should_stop`, after writing the report.
The doctor's status reaches every logger through `LightningModule.log`: `doctor/worst_severity`
(-1 for no finding, 0 info, 1 warning, 2 error, 3 critical) and `doctor/findings` (how many).
The run directory (default `<trainer.log_dir>/quad-doctor`) gets the same `events.jsonl`,
`report.json` and `report.html` as `quad-doctor train`'s, so `quad-doctor report --run-dir DIR`
renders it.

With several processes (`strategy="ddp"`), rank 0 judges every rank's batch: each judged step,
one all-gather brings it every rank's labels and loss and takes its stop decision to every rank,
so all ranks stop at the same step (one step after the doctor decides). Only rank 0 writes files,
and only rank 0 calls `loss_fn` to probe it: give one without collectives inside. With
`accumulate_grad_batches > 1`, each optimizer step is judged by its last micro-batch. What the
doctor found travels in Lightning's checkpoints, so a resumed run keeps it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.text import Text
from torch import Tensor, nn

from quad_doctor.context import top_level_group
from quad_doctor.findings import Severity
from quad_doctor.live import Monitor, Run, non_finite_rows
from quad_doctor.trainer.errors import MissingExtraError, SetupError
from quad_doctor.watch import (
    as_labels,
    batch_labels,
    describe_loop,
    open_run_dir,
    parse_stop_on,
    sampler_name,
)

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise MissingExtraError(
            "quad_doctor.integrations.lightning: PyTorch Lightning is not installed; "
            'pip install "quad-doctor[lightning]"'
        ) from None

OWNER = "DoctorCallback"
# where the run directory goes when none is given: beside the loggers' files
RUN_DIR_NAME = "quad-doctor"
NO_FINDING = -1  # `doctor/worst_severity` before the first finding
# training_step's dict entries that hold what the loss saw, in the order they are looked for
FEATURE_KEYS = ("features", "embeddings")
# the LightningModule attributes taken as the loss when `loss_fn` is not given
LOSS_ATTRIBUTES = ("loss_fn", "criterion")


class DoctorCallback(pl.Callback):
    """The live doctor as a Lightning `Callback` (see the module's docstring for what it reads).

    `run_dir`: where events and reports go (default `<trainer.log_dir>/quad-doctor`); checked
    for writing now. `stop_on`: "critical", "error", "warning" or None; training stops at the
    first finding at or above it. `loss_fn(outputs, labels)` -> scalar (a dict with "loss" or an
    object with `.loss` is read too): probed for the loss's floor and collapse value (default:
    the module's `loss_fn` or `criterion`). `batch_fn(batch) -> (inputs, labels)`: for batches
    that are not `(x, y)` or a dict with labels. `quiet`: no event lines on stderr. `log`: the
    doctor's status through `LightningModule.log`. `gather_features`: the loss is computed over
    every rank's batch together (the doctor then judges the class mix of the gathered batch).
    `warmup_steps`: the schedule's warm-up, which the LR rules allow for. `module_of(name)`:
    a parameter's module, for per-module gradient norms (default: the module's top-level
    children, one level deeper when it holds its network in a single child).
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        stop_on: str | Severity | None = None,
        loss_fn: Callable[[Tensor, Tensor], Any] | None = None,
        batch_fn: Callable[[Any], tuple[Any, Any]] | None = None,
        quiet: bool = False,
        log: bool = True,
        *,
        gather_features: bool = False,
        warmup_steps: int = 0,
        module_of: Callable[[str], str] | None = None,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("loss_fn", loss_fn), ("batch_fn", batch_fn), ("module_of", module_of)):
            if value is not None and not callable(value):
                raise SetupError(f"{OWNER}: {name} must be callable, got {type(value).__name__}")
        self.stop_on = parse_stop_on(stop_on, OWNER)
        # a given directory is proven writable now, not at the first event hours in
        self.run_dir = open_run_dir(run_dir, OWNER) if run_dir is not None else None
        self.loss_fn = loss_fn
        self.batch_fn = batch_fn
        self.quiet = quiet
        self.log_status = log
        self.gather_features = gather_features
        self.warmup_steps = warmup_steps
        self.module_of = module_of
        self.class_names = list(class_names) if class_names is not None else None
        self.seed = seed
        self.monitor: Monitor | None = None  # rank 0's, from the start of training
        self._resume_state: dict[str, Any] = {}
        self._start_fit()

    def _start_fit(self) -> None:
        """Forget the last fit's steps (a callback may serve several `fit` calls)."""
        self.finished = False  # the report is written: the doctor watches no more steps
        self._step: int | None = None  # this batch's optimizer step, once it is taken
        self._applied_lr: list[float] = []
        self._probe_checked = False
        self._capacity: int | None = None  # labels per rank in the per-step gather
        self._logged: tuple[int, int, int] | None = None
        self._world_size = 1
        self._loss_scale = 1  # Lightning divides the loss it hands back by this

    # -- the run's start -------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_fit()
        # fixed for the fit; read here, not on every step
        self._world_size = trainer.world_size
        if pl_module.automatic_optimization:
            self._loss_scale = trainer.accumulate_grad_batches
        run_dir = self.run_dir
        if run_dir is None:
            # trainer.log_dir is a broadcast from rank 0: every rank asks for it
            run_dir = Path(trainer.log_dir or trainer.default_root_dir) / RUN_DIR_NAME
        if not trainer.is_global_zero:
            self.monitor = None
            return
        if self.run_dir is None:
            run_dir = open_run_dir(run_dir, OWNER)
        given = self.loss_fn
        if given is None:
            given = next(
                (
                    found
                    for found in (getattr(pl_module, name, None) for name in LOSS_ATTRIBUTES)
                    if callable(found)
                ),
                None,
            )
        loader = trainer.train_dataloader
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        device = pl_module.device
        context = describe_loop(f"Lightning ({OWNER})", pl_module, optimizer, given, device, loader)
        context["strategy"] = type(trainer.strategy).__name__
        context["world_size"] = trainer.world_size
        if self.class_names is not None:
            context["classes"] = self.class_names
        steps = trainer.num_training_batches
        accumulate = trainer.accumulate_grad_batches
        self.monitor = Monitor(stop_on=self.stop_on)
        self.monitor.start(
            Run(
                run_dir=run_dir,
                model=pl_module,
                loss_fn=_scalar_loss(given) if given is not None else None,
                # the doctor's steps are optimizer steps
                steps_per_epoch=math.ceil(steps / accumulate) if math.isfinite(steps) else 0,
                num_epochs=trainer.max_epochs if (trainer.max_epochs or 0) > 0 else None,
                warmup_steps=self.warmup_steps,
                gather_features=self.gather_features,
                sampler=sampler_name(loader),
                module_of=self.module_of or module_grouping(pl_module),
                seed=self.seed,
                device=device,
                context=context,
                say=None if self.quiet else Console(stderr=True).print,
            ),
            first_step=trainer.global_step,
        )
        if self._resume_state:
            self.monitor.load_state_dict(self._resume_state)
            self._resume_state = {}

    # -- every step ------------------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step = None
        self._applied_lr = []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        # The gradients are final here and, under AMP, already unscaled: Lightning's
        # MixedPrecision.optimizer_step (lightning/pytorch/plugins/precision/amp.py) calls
        # `scaler.unscale_(optimizer)` and then `_after_closure`, which runs this hook before
        # gradient clipping and the step. (An optimizer that unscales inside its own `step`, a
        # fused one, still holds scaled gradients here.)
        self._applied_lr.extend(group["lr"] for group in optimizer.param_groups)
        if self._step is not None:
            return  # a second optimizer in the same batch (manual optimization)
        self._step = trainer.global_step
        if self.monitor is not None and not self.finished:
            self.monitor.gradients_ready(self._step)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step, self._step = self._step, None
        if step is None:
            return  # an accumulating micro-batch: its optimizer step is judged with the last one
        loss, features = training_step_output(outputs)
        if loss is None:
            return  # training_step skipped this batch
        loss *= self._loss_scale
        inputs, labels = batch_labels(batch, self.batch_fn)
        labels = as_labels(labels, f"{OWNER}: the batch's labels")
        rank_labels = rank_losses = None
        if self._world_size > 1:
            stop, rank_labels, rank_losses = self._gather(trainer, pl_module, labels, loss)
            if stop:
                trainer.should_stop = True  # on every rank at once
            if self.gather_features:
                rank_losses = None  # one loss over every rank's batch: the same on each
        monitor = self.monitor
        if monitor is None or self.finished:
            return
        outputs_seen = features
        if not self._probe_checked:
            self._probe_checked = True
            outputs_seen = self._probeable(monitor, features, labels)
        monitor.pre_update(
            step,
            trainer.current_epoch,
            loss,
            labels,
            self._applied_lr or [math.nan],
            outputs=outputs_seen,
            rank_labels=rank_labels,
            rank_losses=rank_losses,
            world_size=self._world_size,
            inspect=lambda ranks: _inspect(inputs, len(labels), ranks),
        )
        monitor.post_update(step, features)
        if monitor.stop_reason:
            self._stop(trainer)
        if self.log_status:
            self._log(trainer, pl_module, monitor)

    def _gather(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, labels: Any, loss: float
    ) -> tuple[bool, list[np.ndarray], list[float]]:
        """One all-gather: whether rank 0's doctor has stopped, every rank's labels and loss."""
        strategy = trainer.strategy
        device = pl_module.device
        labels = torch.as_tensor(labels)
        if self._capacity is None:  # once: the largest batch any rank draws sizes the rows
            sizes = strategy.all_gather(torch.tensor([len(labels)], device=device))
            self._capacity = int(sizes.max())
        count = min(len(labels), self._capacity)
        row = torch.full((3 + self._capacity,), -1.0, dtype=torch.float64, device=device)
        row[0] = float(self.finished and bool(self.monitor and self.monitor.stop_reason))
        row[1] = loss
        row[2] = count
        row[3 : 3 + count] = labels[:count].to(device=device, dtype=torch.float64)
        table = strategy.all_gather(row).cpu()
        counts = table[:, 2].long().tolist()
        rank_labels = [table[r, 3 : 3 + n].long().numpy() for r, n in enumerate(counts)]
        return bool(table[:, 0].any()), rank_labels, table[:, 1].tolist()

    def _probeable(
        self, monitor: Monitor, features: Tensor | None, labels: Tensor | np.ndarray
    ) -> Tensor | None:
        """The first step's features when the loss can be probed with outputs like them (the
        loss-bounds rules are off otherwise, and the user is told why)."""
        loss_fn = monitor.run.loss_fn
        if loss_fn is None:
            return features
        if features is None:
            self._say(
                "doctor: training_step returns no 'features' entry: the loss-bounds rules are off"
            )
            return None
        try:
            with torch.no_grad():
                value = float(loss_fn(features.detach(), torch.as_tensor(labels)))
        except Exception as error:  # a loss the probe cannot call: watch without its bounds
            self._say(f"doctor: loss_fn(features, labels) failed ({error}): loss bounds are off")
            return None
        return features if math.isfinite(value) else None

    def _stop(self, trainer: pl.Trainer) -> None:
        """Write the report; stop training (in one process now, on every rank at the next
        step's gather)."""
        monitor = self.monitor
        assert monitor is not None
        monitor.finish("stopped")
        self.finished = True
        self._say(f"quad-doctor stopped training: {monitor.stop_reason} ({monitor.run_dir})")
        if self._world_size == 1:
            trainer.should_stop = True

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, monitor: Monitor) -> None:
        """The status through `LightningModule.log`, when it changes (Lightning keeps a logged
        step value until the epoch ends and hands it to the loggers at each of their steps; a
        `log` call costs ~0.35 ms, 1.7 % of a 20 ms step, so one per step would be too many)."""
        worst = monitor.worst
        status = (
            trainer.current_epoch,
            NO_FINDING if worst is None else int(worst),
            len(monitor.findings),
        )
        if status == self._logged:
            return
        self._logged = status
        for name, value in (("worst_severity", status[1]), ("findings", status[2])):
            pl_module.log(
                f"doctor/{name}", float(value), on_step=True, on_epoch=False, rank_zero_only=True
            )

    def _say(self, message: str) -> None:
        if self.monitor is not None and self.monitor.run.say is not None:
            self.monitor.run.say(Text(message, style="dim"))

    # -- the run's end ---------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.pause()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.pause()  # validation is not step time

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None or self.finished:
            return
        self.monitor.epoch_end()
        if self.monitor.stop_reason:
            self._stop(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(None)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._finish("interrupted")

    def _finish(self, status: str | None) -> None:
        if self.monitor is not None and not self.finished:
            self.monitor.finish(status)
            self.finished = True

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        # what the doctor found so far travels in Lightning's checkpoints (plain data)
        return self.monitor.state_dict() if self.monitor is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = dict(state_dict)  # applied when training starts


def training_step_output(outputs: Any) -> tuple[float | None, Tensor | None]:
    """The loss (None when there is none) and the features (None when not returned) in what
    `training_step` returned: a tensor, or a dict with "loss" and maybe "features"/"embeddings".
    """
    loss = outputs
    features = None
    if type(outputs) is dict or isinstance(outputs, Mapping):  # the ABC check costs ~30 us
        loss = outputs.get("loss")
        features = next(
            (outputs[key] for key in FEATURE_KEYS if isinstance(outputs.get(key), Tensor)), None
        )
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        return None, features
    return loss.item(), features


def _inspect(inputs: Any, size: int, ranks: list[int]) -> tuple[list[str], dict[str, list[str]]]:
    """At a non-finite step: the rows of this batch (rank 0's own, the one it can search) and
    those holding NaN/Inf per input stream."""
    if 0 not in ranks:
        return [], {}
    ids = [str(i) for i in range(size)]
    return ids, non_finite_rows(inputs, ids)


def module_grouping(model: nn.Module) -> Callable[[str], str]:
    """A parameter's module for per-module gradient norms: the model's top-level child, or the
    child's own children when one child holds every trainable parameter (`self.model = net`)."""
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    tops = {top_level_group(name) for name in names}
    if len(tops) != 1 or any(name.count(".") < 2 for name in names):
        return top_level_group
    prefix = f"{tops.pop()}."
    return lambda name: top_level_group(name.removeprefix(prefix))


def _scalar_loss(loss_fn: Callable[[Tensor, Tensor], Any]) -> Callable[[Tensor, Tensor], Tensor]:
    """`loss_fn` returning its scalar: the tensor, a dict's "loss" or an object's `.loss`."""

    def scalar(outputs: Tensor, labels: Tensor) -> Tensor:
        value = loss_fn(outputs, labels)
        if isinstance(value, Mapping):
            return value["loss"]
        return value if isinstance(value, Tensor) else value.loss

    return scalar
