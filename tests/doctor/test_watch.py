"""The live doctor in a plain PyTorch loop (`quad_doctor.Watch`): what a user's own loop gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_support import render_run_dir
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import quad_doctor
from quad_doctor.trainer.losses import SupConLoss

SEVERE = {"error", "critical"}
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "har_project"
CLASSES, PER_CLASS, DIM = 6, 64, 24


def supcon(features, labels):
    """A user's loss: SupCon on the normalised embeddings, as a scalar."""
    return SupConLoss(0.1)(F.normalize(features, dim=1), labels).loss


def problem(seed: int = 0):
    """Six gaussian classes stored class by class, as real datasets are."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    centres = torch.randn(CLASSES, DIM, generator=generator) * 2
    inputs = centres[labels] + torch.randn(len(labels), DIM, generator=generator)
    return TensorDataset(inputs, labels)


def model_and_optimizer(seed: int = 0, lr: float = 1e-3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 32))
    return model, torch.optim.Adam(model.parameters(), lr=lr)


def train(loader, model, optimizer, watch=None, epochs=3, poison=None):
    """The user's loop; returns the steps whose update was applied."""
    applied = 0
    for epoch in range(epochs):
        for step, (inputs, labels) in enumerate(loader):
            if poison is not None and epoch * len(loader) + step == poison:
                inputs = inputs.clone()
                inputs[3] = float("nan")
            outputs = model(inputs)
            loss = supcon(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            if watch is not None and watch.step(
                loss, labels, outputs=outputs, inputs=inputs, epoch=epoch
            ):
                return applied
            optimizer.step()
            applied += 1
    return applied


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_a_class_sorted_loader_is_caught_within_50_steps_ranked_first_and_stopped(tmp_path):
    loader = DataLoader(problem(), batch_size=32, shuffle=False)  # 2 classes in 12 batches
    model, optimizer = model_and_optimizer()
    watch = quad_doctor.Watch(
        model,
        optimizer,
        loss_fn=supcon,
        train_loader=loader,
        run_dir=tmp_path / "run",
        stop_on="critical",
        quiet=True,
    )
    applied = train(loader, model, optimizer, watch, epochs=10)
    report = watch.close()
    assert applied < 50, applied
    assert watch.stop_reason.startswith("critical sampler-class-mix at step 7")
    top = report.findings[0].finding
    assert (top.check, str(top.severity)) == ("sampler-class-mix", "critical")
    assert "ln(B-1) = ln(31) = 3.4340" in top.title
    assert top.evidence["sampler"] == "BatchSampler(SequentialSampler)"
    assert "StratifiedBatchSampler" in top.code_change
    assert "loss-bounds" in [f.check for f in report.findings[0].explained]
    run = tmp_path / "run"
    saved = json.loads((run / "report.json").read_text())
    assert saved["training"]["status"] == "stopped"
    assert saved["findings"][0]["check"] == "sampler-class-mix"
    assert "<svg" in (run / "report.html").read_text()
    assert events(run)[0]["step"] == 7 and events(run)[0]["rule"] == "sampler-class-mix"


def test_the_run_directory_renders_with_quad_doctor_report(tmp_path):
    loader = DataLoader(problem(), batch_size=32, shuffle=False)
    model, optimizer = model_and_optimizer()
    with quad_doctor.Watch(
        model, optimizer, loss_fn=supcon, run_dir=tmp_path, stop_on="critical", quiet=True
    ) as watch:
        train(loader, model, optimizer, watch)
    done = render_run_dir(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "stopped: critical sampler-class-mix at step 7" in done.stdout
    assert "plain loop (Watch)" in done.stdout


def test_a_healthy_loop_runs_to_the_end_with_nothing_at_error_or_above(tmp_path):
    loader = DataLoader(
        problem(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    model, optimizer = model_and_optimizer()
    watch = quad_doctor.Watch(
        model, optimizer, loss_fn=supcon, run_dir=tmp_path, stop_on="error", quiet=True
    )
    applied = train(loader, model, optimizer, watch, epochs=6)
    report = watch.close()
    assert applied == 6 * len(loader)
    assert [e for e in events(tmp_path) if e["severity"] in SEVERE] == []
    assert report.training["status"] == "finished" and report.training["global_step"] == applied
    assert report.training["epoch"] == 5
    steps = report.training["steps"]
    assert steps["loss"][-1] < steps["loss"][0] - 0.2  # it learnt, and the doctor saw it
    assert min(steps["classes"]) >= 4  # shuffled batches of 32 over 6 classes


def test_a_nan_input_stops_before_the_update_with_the_sample_named(tmp_path):
    loader = DataLoader(
        problem(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    model, optimizer = model_and_optimizer()
    watch = quad_doctor.Watch(
        model, optimizer, loss_fn=supcon, run_dir=tmp_path, stop_on="critical", quiet=True
    )
    applied = train(loader, model, optimizer, watch, poison=20)
    report = watch.close()
    assert applied == 20  # the poisoned step was not applied
    assert all(torch.isfinite(p).all() for p in model.parameters())
    top = report.findings[0]
    assert top.finding.check == "data-integrity"  # the cause, with its symptom under it
    assert top.finding.evidence == {"step": 20, "inputs_sample_ids": ["3"]}  # its batch position
    (symptom,) = top.explained
    assert symptom.check == "non-finite" and "the loss is nan at step 20" in symptom.title


def test_watching_changes_nothing_in_training(tmp_path):
    def weights(watched: bool):
        loader = DataLoader(
            problem(), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        model, optimizer = model_and_optimizer()
        torch.manual_seed(1)
        watch = None
        if watched:
            watch = quad_doctor.Watch(
                model, optimizer, loss_fn=supcon, run_dir=tmp_path, quiet=True
            )
        train(loader, model, optimizer, watch, epochs=2)
        if watch is not None:
            watch.close()
        return [p.detach().clone() for p in model.parameters()], torch.rand(3)

    (plain, plain_rng), (watched, watched_rng) = weights(False), weights(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    assert torch.equal(plain_rng, watched_rng)  # the RNG stream is the loop's own


def test_labels_come_from_a_dict_batch_and_an_exception_marks_the_run_interrupted(tmp_path):
    model, optimizer = model_and_optimizer()
    inputs = torch.randn(32, DIM)
    with pytest.raises(RuntimeError, match="the user's bug"):
        with quad_doctor.Watch(model, optimizer, run_dir=tmp_path, quiet=True) as watch:
            for _ in range(3):
                loss = model(inputs).pow(2).mean()
                loss.backward()
                watch.step(loss, batch={"x": inputs, "target": torch.arange(32) % 4})
            raise RuntimeError("the user's bug")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["training"]["status"] == "interrupted"
    assert saved["training"]["global_step"] == 3
    assert "loss-bounds" not in saved["training"]["doctor"]["rules"]  # no loss_fn: no bounds


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"stop_on": "fatal"}, "Watch: stop_on='fatal' is not a severity; use one of critical"),
        ({"model": "resnet"}, "Watch: model must be a torch.nn.Module, got str"),
        ({"optimizer": 0.1}, "Watch: optimizer must be a torch.optim.Optimizer, got float"),
        ({"loss_fn": "supcon"}, "Watch: loss_fn must be callable, got str"),
    ],
)
def test_bad_arguments_are_one_clear_error(tmp_path, kwargs, fragment):
    with pytest.raises(quad_doctor.SetupError) as error:
        quad_doctor.Watch(**{"run_dir": tmp_path, **kwargs})
    assert str(error.value).startswith(fragment)
    assert "\n" not in str(error.value)


def test_an_unwritable_run_dir_is_named_before_training_starts(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(quad_doctor.SetupError, match=r"Watch: run_dir .*a-file/run: cannot write"):
        quad_doctor.Watch(run_dir=blocker / "run")


def test_bad_labels_are_named(tmp_path):
    watch = quad_doctor.Watch(run_dir=tmp_path, quiet=True)
    with pytest.raises(quad_doctor.SetupError, match="Watch.step: labels must be one integer"):
        watch.step(torch.tensor(1.0), torch.rand(8))
    with pytest.raises(quad_doctor.SetupError, match="Watch.step: pass labels= or batch="):
        watch.step(torch.tensor(1.0))


def test_the_example_projects_own_loop_is_stopped_by_the_doctor(tmp_path, small_dataset):
    run_dir = tmp_path / "doctor"
    done = subprocess.run(
        [sys.executable, "-m", "src.train", "--epochs", "3", "--doctor-dir", str(run_dir)],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HAR_DATA": str(small_dataset)},
    )
    assert done.returncode == 0, done.stderr
    # 6 batches an epoch: the rule judges the first epoch's six together, and the loop stops
    assert "stopped by quad-doctor: critical sampler-class-mix at step 5" in done.stdout
    assert "epoch 1/3" in done.stdout and "epoch 3/3" not in done.stdout
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["findings"][0]["check"] == "sampler-class-mix"
    assert (run_dir / "report.html").exists()
