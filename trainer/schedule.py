"""Learning-rate schedules, applied per optimisation step."""

from __future__ import annotations

import math

from quad_doctor.trainer.config import TrainConfig


class LRSchedule:
    """The learning rate at every step: linear warm-up then cosine decay, or constant.

    `cosine_warmup` rises linearly from `warmup_start_lr` to `learning_rate` over `warmup_epochs`,
    then follows a half cosine down to `min_lr` at the last step of training.
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.kind = config.lr_scheduler
        self.peak = config.learning_rate
        self.start = config.warmup_start_lr
        self.end = config.min_lr
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, config.num_epochs * steps_per_epoch)
        self.warmup_steps = min(config.warmup_epochs * steps_per_epoch, self.total_steps)

    def lr_at(self, step: int) -> float:
        """The learning rate for optimisation step `step` (0-based, counted over the whole run)."""
        if self.kind == "constant":
            return self.peak
        if step < self.warmup_steps:
            return self.start + (self.peak - self.start) * step / self.warmup_steps
        decay_steps = max(1, self.total_steps - 1 - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.end + (self.peak - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def all_steps(self) -> list[float]:
        """The learning rate at every step of the run, in order."""
        return [self.lr_at(step) for step in range(self.total_steps)]
