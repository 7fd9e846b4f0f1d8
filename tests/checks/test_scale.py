"""The doctor at scale: a long run's learning-rate schedule is computed, not stepped."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from quad_doctor.context import DiagnosisContext, lambda_schedule
from quad_doctor.trainer.config import load_config


def stepped(scheduler, steps: int, interval: int = 1) -> list[float]:
    """The learning rate at each step of a copy of `scheduler`, stepped every `interval` steps."""
    scheduler = copy.deepcopy(scheduler)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(steps):
            lrs.append(scheduler.optimizer.param_groups[0]["lr"])
            if (step + 1) % interval == 0:
                scheduler.step()
    return lrs


@pytest.mark.parametrize(
    "overrides", [[], ["train.lr_scheduler='constant'"], ["train.warmup_epochs=40"]]
)
def test_the_embedded_schedule_is_the_one_stepping_gives(overrides):
    ctx = DiagnosisContext(load_config(overrides=["data.synthetic.num_samples=240", *overrides]))
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=ctx.learning_rate)
    expected = stepped(ctx.setup.scheduler(optimizer), ctx.schedule.total_steps)
    assert np.array_equal(ctx.schedule.lrs, expected)


def test_a_lambda_schedule_already_stepped_and_stepped_per_epoch_is_exact():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert lambda_schedule(scheduler, 0, 50, 7).tolist() == stepped(scheduler, 50, interval=7)
