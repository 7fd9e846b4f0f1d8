from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from quad_doctor.context import DiagnosisContext
from quad_doctor.engine import check_names, diagnose
from quad_doctor.trainer.config import load_config


def file_hashes(directory):
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


def snapshot(ctx):
    model = {key: value.clone() for key, value in ctx.model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in ctx.model.named_parameters()}
    grads = [p.grad for p in ctx.model.parameters()]
    optimizer = ctx.optimizer.state_dict()
    return model, flags, grads, optimizer, ctx.model.training


def test_diagnosis_changes_no_model_optimizer_rng_or_file(small_overrides, small_dataset):
    config = load_config(overrides=[*small_overrides, "train.sampler=sequential"])
    ctx = DiagnosisContext(config)
    files = file_hashes(small_dataset)
    model, flags, grads, optimizer, training = snapshot(ctx)
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())

    report = diagnose(config, ctx=ctx)

    assert {run.name for run in report.checks} == set(check_names())
    assert report.findings[0].finding.check == "sampler-class-mix"
    after_model, after_flags, after_grads, after_optimizer, after_training = snapshot(ctx)
    assert after_model.keys() == model.keys()
    assert all(torch.equal(model[key], after_model[key]) for key in model)
    assert after_flags == flags and after_training == training
    assert all(g is None for g in after_grads) and all(g is None for g in grads)
    assert after_optimizer["state"] == optimizer["state"] == {}
    assert after_optimizer["param_groups"] == optimizer["param_groups"]
    assert random.getstate() == rng[0]
    after_numpy = np.random.get_state()
    assert after_numpy[0] == rng[1][0] and np.array_equal(after_numpy[1], rng[1][1])
    assert torch.equal(torch.get_rng_state(), rng[2])
    assert file_hashes(small_dataset) == files
