"""Learning-rate schedules, as multiplicative factors of the optimizer's base LR."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(
    optimizer: Optimizer,
    warmup_steps: int,
    total_steps: int,
    start_factor: float,
    min_factor: float,
) -> LambdaLR:
    """Linear warm-up from ``start_factor`` to 1 over ``warmup_steps``, then cosine decay to
    ``min_factor`` at ``total_steps``. Step it once per optimizer step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start_factor + (1.0 - start_factor) * step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
