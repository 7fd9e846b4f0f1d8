"""`TrainingSetup`: the pieces of a training run that quad-doctor diagnoses, whoever wrote them.

A setup holds the user's own model, loss, optimizer, schedule and batch sampler (through its
loader). The embedded quadmodal trainer is one provider of it (`quad_doctor.trainer.embedded`);
a user's `doctor_setup.py` is another. The doctor reads a setup and nothing else, and never
changes what it holds: probes train copies.

The contract:

- `loss_fn(outputs, labels)` returns a scalar tensor;
- `optimizer` is an `Optimizer` over the model's parameters, or a callable `params -> Optimizer`;
- `scheduler` is an `LRScheduler` on that optimizer, or a callable `optimizer -> scheduler`,
  stepped every optimisation step (`scheduler_interval="step"`) or every epoch (`"epoch"`);
- `batch_fn(batch) -> (inputs, labels)` and `forward_fn(model, inputs) -> outputs` default to
  the conventions `default_batch_fn` and `default_forward` describe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from quad_doctor.trainer.errors import SetupError

if TYPE_CHECKING:
    from quad_doctor.trainer.config import Config

# Keys a dict batch may hold its labels under, in the order they are looked for.
LABEL_KEYS = ("label", "labels", "target", "targets")
SCHEDULER_INTERVALS = ("step", "epoch")

Inputs = Any  # a tensor, a tuple/list of tensors, or a dict of named tensors
BatchFn = Callable[[Any], tuple[Inputs, torch.Tensor]]
ForwardFn = Callable[[nn.Module, Inputs], Any]


def default_batch_fn(batch: Any) -> tuple[Inputs, Any]:
    """`(b[0], b[1])` for a tuple/list batch; for a dict batch the `label`/`labels`/`target`/
    `targets` entry as labels and the other entries as inputs."""
    if isinstance(batch, Mapping):
        for key in LABEL_KEYS:
            if key in batch:
                return {k: v for k, v in batch.items() if k != key}, batch[key]
        raise SetupError(
            f"batch_fn: a dict batch needs its labels under one of {', '.join(LABEL_KEYS)} "
            f"(keys: {', '.join(map(str, batch))}); pass batch_fn=lambda b: (inputs, labels)"
        )
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 2:
        return batch[0], batch[1]
    raise SetupError(
        f"batch_fn: cannot split a {type(batch).__name__} batch into inputs and labels; pass "
        "batch_fn=lambda b: (inputs, labels)"
    )


def default_forward(model: nn.Module, inputs: Inputs) -> Any:
    """`model(x)` for a tensor, `model(*x)` for a tuple/list, `model(**x)` for a dict."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, list | tuple):
        return model(*inputs)
    return model(inputs)


@dataclass
class TrainingSetup:
    """A training run's pieces: what `quad_doctor.diagnose` and `diagnose --setup` examine.

    Only `model`, `loss_fn`, `optimizer` and `train_loader` are required. `labels` (one class
    label per index of the training dataset) default to the dataset's `targets` or `labels`
    attribute, else they are read through the dataset once. `epochs` is the planned length of
    training, which the schedule is judged over.
    """

    model: nn.Module
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer]
    train_loader: Any
    labels: Sequence[int] | np.ndarray | torch.Tensor | None = None
    scheduler: Any = None
    scheduler_interval: str = "step"
    epochs: int | None = None
    val_loader: Any = None
    class_names: Sequence[str] | None = None
    batch_fn: BatchFn | None = None
    forward_fn: ForwardFn | None = None
    # Extensions beyond the contract: the device probes run on ("auto": CUDA when present), the
    # seed they draw random numbers from, and a parameter name -> group name mapping (default:
    # the model's top-level children).
    device: str | torch.device = "auto"
    seed: int = 0
    parameter_group: Callable[[str], str] | None = None
    # Set by the embedded trainer's provider only: its resolved config, so remedies can be
    # config patches, and where its dataset lies.
    config: Config | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a `SetupError` naming the first field whose value cannot work."""
        if not isinstance(self.model, nn.Module):
            raise _wrong("model", "a torch.nn.Module", self.model)
        if not callable(self.loss_fn):
            raise _wrong("loss_fn", "a callable loss_fn(outputs, labels)", self.loss_fn)
        if not isinstance(self.optimizer, torch.optim.Optimizer) and not callable(self.optimizer):
            raise _wrong(
                "optimizer", "a torch.optim.Optimizer or a callable params -> Optimizer",
                self.optimizer,
            )  # fmt: skip
        if batch_sampler_of(self.train_loader) is None:
            raise _wrong(
                "train_loader",
                "a torch DataLoader with a dataset and a batch_sampler (or batch_size)",
                self.train_loader,
            )
        if self.scheduler is not None and not (
            callable(self.scheduler) or hasattr(self.scheduler, "step")
        ):
            raise _wrong("scheduler", "an LRScheduler or a callable optimizer -> scheduler",
                         self.scheduler)  # fmt: skip
        if self.scheduler_interval not in SCHEDULER_INTERVALS:
            raise SetupError(
                f"TrainingSetup.scheduler_interval: expected 'step' or 'epoch', got "
                f"{self.scheduler_interval!r}"
            )
        if self.epochs is not None and (
            isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1
        ):
            raise _wrong("epochs", "a positive int", self.epochs)
        if self.labels is not None:
            array = label_array(self.labels)
            if array is None:
                raise _wrong("labels", "one integer class label per dataset index", self.labels)
            size = dataset_length(self.train_loader.dataset)
            if size is not None and len(array) != size:
                raise SetupError(
                    f"TrainingSetup.labels: {len(array)} labels for a training dataset of {size} "
                    "items (one label per dataset index)"
                )
        for name in ("batch_fn", "forward_fn", "parameter_group"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise _wrong(name, "a callable", value)
        if self.class_names is not None and (
            isinstance(self.class_names, str)
            or not all(isinstance(n, str) for n in self.class_names)
        ):
            raise _wrong("class_names", "a list of strings", self.class_names)

    def replace(self, **changes: Any) -> TrainingSetup:
        """A new setup with some fields replaced (the others shared, never copied)."""
        return dataclasses.replace(self, **changes)


def batch_sampler_of(loader: Any) -> Any:
    """What yields a loader's batches of dataset indices: a DataLoader's `batch_sampler` (also
    when it was built with `sampler=`/`batch_size=`); None when it has none."""
    if getattr(loader, "dataset", None) is None:
        return None
    return getattr(loader, "batch_sampler", None)


def label_array(values: Any) -> np.ndarray | None:
    """Labels (a list, NumPy array or tensor) as a 1-D int64 array; None when they are not one
    integer per item."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):
        return None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        return None
    return array.astype(np.int64, copy=False)


def dataset_length(dataset: Any) -> int | None:
    """`len(dataset)`, or None for a dataset without one (an iterable dataset)."""
    try:
        return len(dataset)
    except TypeError:
        return None


def _wrong(name: str, expected: str, value: Any) -> SetupError:
    return SetupError(f"TrainingSetup.{name}: expected {expected}, got {type(value).__name__}")
