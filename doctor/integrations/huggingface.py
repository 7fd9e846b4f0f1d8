"""The live doctor inside the Hugging Face `Trainer` (and trainers built on it).

    from quad_doctor.integrations.huggingface import DoctorCallback

    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[
        DoctorCallback(stop_on="critical", loss_fn=SupConLoss(0.1)),
    ])
    trainer.train()  # events.jsonl, report.json, report.html in <output_dir>/quad-doctor

How it sees what a callback is not handed:

- Labels and loss. Callbacks get neither the batch nor the step's loss, so at `on_train_begin`
  the callback puts one forward hook (`with_kwargs=True`) on the model: on training forwards only
  (the module in train mode, gradients on; evaluation runs under `no_grad`) it reads the labels
  from the forward's `labels` argument (`labels_key`), the loss from the output's `loss` (a
  `ModelOutput`, a dict, or a tuple's first item, as the Trainer itself reads it) and the
  embeddings from the output's `embeddings` field (`outputs_key`). With gradient accumulation
  the loss of an optimizer step is the mean over its micro-batches (their sum when the model
  normalises by `num_items_in_batch`, as the Trainer then logs it), and the labels and
  embeddings the doctor judges are the step's first micro-batch's: SupCon scores each
  micro-batch alone, so the class mix is judged on the batches the loss really sees, one of
  every k (a step gone non-finite has every micro-batch's inputs searched, its samples named
  `micro-batch:row`). The hook is removed at `on_train_end`, and when the callback itself fails
  the run; the model is left as it was. (When `train()` raises, the Trainer calls no callback:
  the hook then stays until the next `train()` with this callback.)
- Labels that never reach the model. A `compute_loss` or `compute_loss_func` that pops the
  labels and scores the model's outputs itself (sentence-transformers' trainer does) keeps them
  from the hook. Then pass `loss_module`, the `nn.Module` that gets the labels and returns the
  loss (sentence-transformers' `trainer.loss`): the hook goes on it instead, and `outputs_key`
  may name its forward's argument holding the embeddings. Without it the callback fails at the
  first step with a `SetupError` saying which arguments the model did get: a doctor that cannot
  see the labels cannot see the fault it exists for, and should not look as if it watched.
- Gradients before the update. `on_pre_optimizer_step` runs after the last micro-batch's
  backward and the Trainer's `clip_grad_norm_`, right before `optimizer.step()`: the gradients
  are final, unscaled (accelerate's `clip_grad_norm_` unscales fp16 gradients, and the Trainer
  calls it even with `max_grad_norm=0` to log the norm) and clipped to `max_grad_norm` (1.0 by
  default). Clipping scales every gradient by one factor, so per-module ratios stand, but a
  global norm above 1.0 is not seen: run with `max_grad_norm=0` to let the doctor see gradients
  explode. The step goes to the doctor there (`pre_update`, with the LR each param group holds)
  and comes back once applied, at `on_step_end` (`post_update`). Under an fp16 `GradScaler` a
  measured step whose gradients overflow is left out: the scaler skips that update, as it does
  while it finds its scale. Under DeepSpeed or FSDP the parameters hold no whole gradients: the
  gradient and update rules are off there.
- Stopping. The Trainer applies the step it is in whatever a callback says, so at the first
  finding at or above `stop_on` the callback writes `report.json` and `report.html` at that
  step's `on_step_end` and sets `control.should_training_stop`; the Trainer ends before the
  next step. With several processes the main one's doctor decides and every process stops at
  the same step (one broadcast per step, only when `stop_on` is set).
- Evaluation and checkpointing pause the doctor's step clock. Only the main process
  (`state.is_world_process_zero`) watches and writes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from torch import Tensor, nn

from quad_doctor.findings import Severity
from quad_doctor.live import Monitor, Run, non_finite_rows
from quad_doctor.trainer.errors import MissingExtraError, SetupError
from quad_doctor.watch import (
    as_labels,
    describe_loop,
    open_run_dir,
    parse_stop_on,
    sampler_name,
)

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError:
    raise MissingExtraError(
        "quad_doctor.integrations.huggingface: transformers is not installed; "
        'pip install "quad-doctor[huggingface]"'
    ) from None

OWNER = "DoctorCallback"
# Where the report goes when `run_dir` is not given: beside the Trainer's checkpoints.
DEFAULT_SUBDIR = "quad-doctor"


@dataclass
class _Forward:
    """What one training forward of the watched module showed."""

    arguments: dict[str, Any]  # the forward's arguments by name (the batch's inputs and labels)
    loss: Tensor | None
    outputs: Tensor | None  # the embeddings the loss scored, when found
    normalised: bool  # the loss was normalised by `num_items_in_batch` (summed over micro-batches)


class DoctorCallback(TrainerCallback):
    """The live doctor as a `transformers.TrainerCallback` (see the module's docstring for how
    it reads labels, loss and gradients).

    `run_dir`: where events and reports go (default `<output_dir>/quad-doctor`). `stop_on`:
    "critical", "error", "warning" or None; training stops after the step of the first finding
    at or above it. `loss_fn(outputs, labels)`: probed for the loss's floor and collapse value,
    as `diagnose` probes it (without it, no loss bounds); it may return a tensor or an object
    with a `loss`. `labels_key`: the forward argument holding the labels. `outputs_key`: the
    output field (or `loss_module` argument) holding the embeddings the loss scores, for the
    bounds probe and the collapse rule. `loss_module`: the module that receives the labels when
    the model does not. `quiet`: no event lines on stderr.
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        stop_on: str | Severity | None = None,
        loss_fn: Callable[[Tensor, Tensor], Any] | None = None,
        labels_key: str = "labels",
        outputs_key: str | None = "embeddings",
        loss_module: nn.Module | None = None,
        quiet: bool = False,
    ) -> None:
        if loss_fn is not None and not callable(loss_fn):
            raise SetupError(f"{OWNER}: loss_fn must be callable, got {type(loss_fn).__name__}")
        if not isinstance(labels_key, str) or not labels_key:
            raise SetupError(f"{OWNER}: labels_key must be an argument name, got {labels_key!r}")
        if outputs_key is not None and not isinstance(outputs_key, str):
            raise SetupError(f"{OWNER}: outputs_key must be a name or None, got {outputs_key!r}")
        if loss_module is not None and not isinstance(loss_module, nn.Module):
            raise SetupError(
                f"{OWNER}: loss_module must be a torch.nn.Module, got {type(loss_module).__name__}"
            )
        self.stop_on = parse_stop_on(stop_on, OWNER)
        self._run_dir = open_run_dir(run_dir, OWNER) if run_dir is not None else None
        self.loss_fn = loss_fn
        self.labels_key = labels_key
        self.outputs_key = outputs_key
        self.loss_module = loss_module
        self.quiet = quiet
        self.monitor: Monitor | None = None
        self.skipped_overflow_steps = 0
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._watched: nn.Module | None = None
        self._positional: list[str] = []
        self._forwards: list[_Forward] = []
        self._stepped: tuple[int, Tensor | None] | None = None
        self._finished = False
        self._epoch = 0

    @property
    def run_dir(self) -> Path | None:
        """Where the reports go (None before training starts, without a `run_dir` given)."""
        return self.monitor.run_dir if self.monitor is not None else self._run_dir

    @property
    def stop_reason(self) -> str:
        """Why the doctor stopped training ("" while it has not)."""
        return self.monitor.stop_reason if self.monitor is not None else ""

    # -- training begins and ends ----------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        self._remove_hook()  # a previous train() that raised left it
        self.monitor, self._finished, self._stepped, self._forwards = None, False, None, []
        self.skipped_overflow_steps = 0
        if not state.is_world_process_zero:
            return
        watched = self.loss_module if self.loss_module is not None else model
        if watched is None:
            raise SetupError(f"{OWNER}: the Trainer handed the callback no model to watch")
        run_dir = self._run_dir or open_run_dir(
            Path(args.output_dir or ".") / DEFAULT_SUBDIR, f"{OWNER} (args.output_dir)"
        )
        # Under DeepSpeed and FSDP the parameters hold no whole gradients to measure.
        sharded = bool(args.deepspeed) or bool(args.fsdp)
        accumulation = args.gradient_accumulation_steps
        device = args.device
        context = describe_loop(
            f"Hugging Face Trainer ({OWNER})", model, optimizer, self.loss_fn, device,
            train_dataloader,
        )  # fmt: skip
        context |= {
            "labels_from": f"{type(watched).__name__}.forward({self.labels_key}=)",
            "gradient_accumulation_steps": accumulation,
            "max_grad_norm": args.max_grad_norm,
            **({"gradients": "not measured (DeepSpeed/FSDP)"} if sharded else {}),
        }
        self.monitor = Monitor(stop_on=self.stop_on)
        self.monitor.start(
            Run(
                run_dir=run_dir,
                model=None if sharded else model,
                loss_fn=_scalar_loss(self.loss_fn) if self.loss_fn is not None else None,
                steps_per_epoch=_steps_per_epoch(train_dataloader, accumulation),
                num_epochs=math.ceil(state.num_train_epochs) or None,
                warmup_steps=args.get_warmup_steps(state.max_steps),
                sampler=sampler_name(train_dataloader),
                seed=args.seed,
                device=device,
                context=context,
                say=None if self.quiet else Console(stderr=True).print,
            ),
            first_step=state.global_step,
        )
        self._epoch = math.floor(state.epoch or 0)
        self._watched = watched
        self._positional = _positional_names(watched)
        self._hook = watched.register_forward_hook(self._after_forward, with_kwargs=True)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._remove_hook()
        monitor = self.monitor
        if monitor is None or self._finished:
            return
        self._post_update()
        self._finished = True
        monitor.finish()

    # -- every step ------------------------------------------------------------------------------

    def _after_forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        """The forward hook: keep what a training forward showed (evaluation's are ignored)."""
        if not (module.training and torch.is_grad_enabled()):
            return
        arguments = dict(zip(self._positional, args, strict=False)) | kwargs
        outputs = _field(output, self.outputs_key) if self.outputs_key else None
        if outputs is None and self.outputs_key:
            outputs = arguments.get(self.outputs_key)
        loss = _loss_of(output)
        self._forwards.append(
            _Forward(
                arguments,
                loss.detach() if loss is not None else None,
                outputs.detach() if isinstance(outputs, Tensor) and outputs.ndim == 2 else None,
                arguments.get("num_items_in_batch") is not None,
            )
        )

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        monitor = self.monitor
        forwards, self._forwards = self._forwards, []
        if monitor is None or self._finished:
            return
        step = state.global_step
        try:
            first, loss = self._step_seen(forwards)
            labels = as_labels(first.arguments[self.labels_key], f"{OWNER}: {self.labels_key!r}")
            if self._overflows(optimizer, step):
                self.skipped_overflow_steps += 1
                monitor.run.measurements["fp16_overflow_steps_skipped"] = (
                    self.skipped_overflow_steps
                )
                return
            outputs = first.outputs
            if outputs is not None and len(outputs) != len(labels):
                outputs = None  # not one row per sample: not the embeddings the loss scored
            applied = [g["lr"] for g in optimizer.param_groups] if optimizer else [math.nan]
            monitor.pre_update(
                step,
                self._epoch,
                loss,
                labels,
                applied,
                outputs=outputs,
                inspect=lambda ranks: self._inspect(forwards),
            )
        except Exception:  # the doctor fails the run: leave the model as it was
            self._remove_hook()
            raise
        self._stepped = (step, outputs)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._post_update()
        self._stop_if_asked(args, control)

    def _stop_if_asked(self, args: TrainingArguments, control: TrainerControl) -> None:
        """At the doctor's stop: write the reports and have the Trainer stop, on every process."""
        monitor = self.monitor
        if monitor is not None and monitor.stop_reason and not self._finished:
            self._finished = True
            monitor.finish("stopped")
            control.should_training_stop = True
        if self.stop_on is not None and _distributed():
            self._agree_on_stop(args, control)

    def _post_update(self) -> None:
        if self._stepped is not None and self.monitor is not None and not self._finished:
            self.monitor.post_update(*self._stepped)
        self._stepped = None

    def _step_seen(self, forwards: list[_Forward]) -> tuple[_Forward, float]:
        """The step's first micro-batch and its loss; a `SetupError` when the hook could not see
        labels or loss, saying what it saw."""
        name = type(self._watched).__name__
        if not forwards:
            raise SetupError(
                f"{OWNER}: no training forward of {name} ran before the optimizer step; pass "
                "loss_module= the module that computes the loss"
            )
        first = forwards[0]
        if first.arguments.get(self.labels_key) is None:
            got = ", ".join(k for k, v in first.arguments.items() if v is not None) or "nothing"
            raise SetupError(
                f"{OWNER}: {name}.forward got no {self.labels_key!r} (it got {got}): a "
                "compute_loss or compute_loss_func that pops the labels keeps them from it; pass "
                "labels_key= their name, or loss_module= the module that receives them"
            )
        losses = [f.loss for f in forwards if f.loss is not None]
        if not losses:
            raise SetupError(
                f"{OWNER}: {name}'s output holds no loss (read as output.loss, output['loss'] or "
                "output[0]); pass loss_module= the module that returns it"
            )
        total = float(torch.stack([value.float().reshape(()) for value in losses]).sum())
        return first, total if first.normalised else total / len(losses)

    def _inspect(self, forwards: list[_Forward]) -> tuple[list[str], dict[str, list[str]]]:
        """A step gone non-finite: its samples (`row`, or `micro-batch:row` when it accumulates
        several) and, per input, those holding NaN/Inf."""
        ids: list[str] = []
        found: dict[str, list[str]] = {}
        for number, forward in enumerate(forwards):
            labels = forward.arguments.get(self.labels_key)
            rows = range(len(labels) if labels is not None else 0)
            own = [str(i) if len(forwards) == 1 else f"{number}:{i}" for i in rows]
            ids += own
            for stream, bad in non_finite_rows(forward.arguments, own).items():
                found.setdefault(stream, []).extend(bad)
        return ids, found

    def _overflows(self, optimizer: Any, step: int) -> bool:
        """Whether an fp16 `GradScaler` will skip this step for overflowing gradients; looked at
        only where the doctor measures gradients (elsewhere it does not read them)."""
        scaler = getattr(optimizer, "scaler", None)
        monitor = self.monitor
        if scaler is None or not scaler.is_enabled() or monitor is None or not monitor.named:
            return False
        if not monitor.measured(step):
            return False
        grads = [p.grad for _, p in monitor.named if p.grad is not None]
        return bool(grads) and not all(
            math.isfinite(n) for n in torch.stack(torch._foreach_norm(grads)).tolist()
        )

    def _agree_on_stop(self, args: TrainingArguments, control: TrainerControl) -> None:
        """Every process stops at the step the main process's doctor stops at: one that trained
        on alone would wait for the others at its next gradient reduction, forever."""
        stop = self.monitor is not None and bool(self.monitor.stop_reason)
        flag = torch.tensor([float(stop)], device=args.device)
        dist.broadcast(flag, src=0)
        if flag.item():
            control.should_training_stop = True

    # -- outside the steps -----------------------------------------------------------------------

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._epoch = math.floor((state.epoch or 0) + 1e-9)
        if self.monitor is not None:
            self.monitor.pause()

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._post_update()
        if self.monitor is not None and not self._finished:
            self.monitor.epoch_end()  # judges the steps still pending: it may stop training
        self._stop_if_asked(args, control)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.monitor is not None:
            self.monitor.pause()  # evaluation is not step time

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.monitor is not None:
            self.monitor.pause()  # nor is writing a checkpoint

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._watched = None, None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _positional_names(module: nn.Module) -> list[str]:
    """The names of `module.forward`'s positional parameters, to name positional arguments."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in kinds]


def _steps_per_epoch(loader: Any, accumulation: int) -> int:
    """Optimizer steps per epoch (0 when the loader has no length), as the Trainer counts them."""
    try:
        batches = len(loader)
    except TypeError:
        return 0
    return max(math.ceil(batches / accumulation), 1)


def _field(output: Any, key: str) -> Any:
    """`output[key]` of a dict or `ModelOutput`, `output.key` of another object; None if absent."""
    if isinstance(output, Mapping):
        return output.get(key)
    if isinstance(output, Tensor | tuple | list):
        return None
    return getattr(output, key, None)


def _loss_of(output: Any) -> Tensor | None:
    """The scalar loss in a module's output, read as the Trainer reads it: `output["loss"]` of a
    dict or `ModelOutput`, a tuple's first item; also a bare scalar or an object's `.loss`."""
    if isinstance(output, tuple | list):
        value = output[0] if output else None
    elif isinstance(output, Tensor):
        value = output
    else:
        value = _field(output, "loss")
    return value if isinstance(value, Tensor) and value.numel() == 1 else None


def _scalar_loss(loss_fn: Callable[[Tensor, Tensor], Any]) -> Callable[[Tensor, Tensor], Tensor]:
    """`loss_fn` returning its scalar loss (SupConLoss returns an object holding it)."""

    def scalar(outputs: Tensor, labels: Tensor) -> Tensor:
        value = _loss_of(loss_fn(outputs, labels))
        if value is None:
            raise SetupError(f"{OWNER}: loss_fn(outputs, labels) returned no scalar loss")
        return value

    return scalar
