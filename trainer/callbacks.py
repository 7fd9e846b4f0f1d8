"""The trainer's callback interface: hooks that do nothing by default, called by name.

The live doctor is one such callback; the trainer never imports it (Lightning's `Callback` shape).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from rich.console import RenderableType

    from quad_doctor.trainer.dataset import Batch
    from quad_doctor.trainer.loop import Trainer
    from quad_doctor.trainer.losses import SupConOutput


class Callback:
    """Base class for training callbacks; override the hooks you need."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called when fit begins, after the pieces are built and any resume state is loaded."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Called when fit ends, normally or because a callback asked to stop."""

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Called when a training epoch begins."""

    def on_train_batch_start(self, trainer: Trainer, batch: Batch, step: int) -> None:
        """Called when the train batch starts, after the learning rate is set."""

    def on_after_backward(
        self, trainer: Trainer, batch: Batch, output: SupConOutput, step: int
    ) -> None:
        """Called after the backward pass, before the optimizer step; gradients are populated."""

    def on_train_batch_end(
        self,
        trainer: Trainer,
        batch: Batch,
        features: torch.Tensor,
        output: SupConOutput,
        step: int,
    ) -> None:
        """Called when the train batch ends, after the optimizer step."""

    def on_validation_end(self, trainer: Trainer, epoch: int, val_accuracy: float) -> None:
        """Called when validation ends."""

    def on_train_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """Called when the train epoch ends, after its metrics row is written."""

    def progress_status(self, trainer: Trainer) -> RenderableType | None:
        """A line to show under the progress bar while training, or None for nothing."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints so that it survives a resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by `state_dict`."""
