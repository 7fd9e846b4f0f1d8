"""`diagnose --setup FILE.py:FUNC` on a user's own project, bad setups, and the Python API."""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import one_line_error, run

import quad_doctor as qd

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "har_project" / "doctor_setup.py"

# A tiny but complete user setup: their own model, loss, sampler and data, written to a file.
TINY = """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import quad_doctor as qd


def data():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(240) % 4
    inputs = torch.randn(240, 8, generator=generator) + labels[:, None].float()
    return TensorDataset(inputs, labels), labels


def build():
    dataset, labels = data()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return qd.TrainingSetup(
        model=model,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
        train_loader=DataLoader(dataset, batch_size=32, shuffle=True),
        labels=labels,
        epochs=3,
    )
"""


def write(tmp_path, body: str, name: str = "doctor_setup.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def diagnose_setup(spec: str, tmp_path, *more: str):
    return run(
        "diagnose", "--setup", spec, "--run-dir", str(tmp_path / "run"),
        "--json", str(tmp_path / "report.json"), *more,
    )  # fmt: skip


@pytest.fixture
def har_data(small_dataset, monkeypatch):
    """The example project reads its data from $HAR_DATA: the small synthetic dataset."""
    monkeypatch.setenv("HAR_DATA", str(small_dataset))
    return small_dataset


def test_the_example_projects_sampler_is_ranked_first_with_a_verified_code_fix(tmp_path, har_data):
    page = tmp_path / "page.html"
    code, stdout, stderr = diagnose_setup(
        f"{EXAMPLE}:build", tmp_path, "--fail-on", "critical", "--html", str(page)
    )
    assert code == 1, stderr
    html = page.read_text()
    assert "setup: " in html and "doctor_setup.py:build" in html and "QuadModalNet" in html
    assert "Code change" in html and "StratifiedBatchSampler(labels, batch_size=32)" in html
    assert "Fix verified: with the change applied to a copy" in html
    report = json.loads((tmp_path / "report.json").read_text())
    top = report["findings"][0]
    assert top["check"] == "sampler-class-mix" and top["severity"] == "critical"
    assert "ln(B-1) = ln(31) = 3.4340" in top["title"]
    assert "StratifiedBatchSampler" in top["code_change"]
    assert top["verified"] is True
    explained = {f["check"] for f in top["explained"]}
    assert {"loss-bounds", "lr-range-test"} <= explained
    assert "fix verified: with the change applied to a copy" in stdout
    assert report["context"]["setup"].endswith("doctor_setup.py:build")
    assert report["context"]["batch_sampler"] == "src.samplers.StratifiedBatchSampler"
    assert not (tmp_path / "run" / "config.toml").exists()  # no embedded config to save


def test_the_example_with_quad_doctors_sampler_has_no_sampler_finding(tmp_path, har_data):
    code, _, stderr = diagnose_setup(
        f"{EXAMPLE}:build_fixed", tmp_path, "--only", "sampler-class-mix,loss-bounds"
    )
    assert code == 0, stderr
    assert json.loads((tmp_path / "report.json").read_text())["findings"] == []


def test_a_healthy_cross_entropy_setup_from_a_module_name(tmp_path, monkeypatch):
    write(tmp_path, TINY, "tiny_setup.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, stdout, stderr = diagnose_setup("tiny_setup:build", tmp_path)
    assert code == 0, stdout + stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert [f for f in report["findings"] if f["severity"] != "info"] == []
    bounds = report["measurements"]
    assert report["context"]["loss"] == "CrossEntropyLoss"
    assert {run["name"] for run in report["checks"] if run["status"] == "pass"} >= {
        "loss-bounds",
        "gradient-flow",
        "lr-range-test",
    }, bounds


@pytest.mark.parametrize(
    ("body", "spec_suffix", "fragments"),
    [
        (None, ":build", ["missing.py", "setup file not found"]),
        (TINY, ":nope", ["doctor_setup.py", "no function 'nope'", "it defines: build, data"]),
        ("def build(:\n    pass\n", ":build", ["doctor_setup.py:1", "syntax error"]),
        (
            "def build():\n    x = 1\n    raise RuntimeError('no GPU here')\n",
            ":build",
            ["doctor_setup.py:3", "build() raised RuntimeError: no GPU here"],
        ),
        (
            "def build():\n    return {'model': 1}\n",
            ":build",
            ["returned a dict, not a quad_doctor.TrainingSetup"],
        ),  # fmt: skip
        (
            "import quad_doctor as qd\n\ndef build():\n    return qd.TrainingSetup("
            "model='resnet', loss_fn=len, optimizer=len, train_loader=None)\n",
            ":build",
            ["doctor_setup.py", "TrainingSetup.model: expected a torch.nn.Module, got str"],
        ),
        ("x = 1\n", "", ["expected FILE.py:FUNCTION"]),
        (
            TINY.replace("labels=labels,", "labels=labels[:100],"),
            ":build",
            ["TrainingSetup.labels: 100 labels for a training dataset of 240 items"],
        ),
    ],
)
def test_bad_setups_are_one_line_naming_the_users_file(tmp_path, body, spec_suffix, fragments):
    path = tmp_path / "missing.py" if body is None else write(tmp_path, body)
    code, stdout, stderr = diagnose_setup(f"{path}{spec_suffix}", tmp_path)
    assert code == 2, stdout
    one_line_error(stderr, *fragments)
    assert not (tmp_path / "run").exists() and not (tmp_path / "report.json").exists()


def test_setup_and_config_keys_do_not_mix(tmp_path):
    path = write(tmp_path, TINY)
    code, _, stderr = diagnose_setup(f"{path}:build", tmp_path, "--set", "train.batch_size=8")
    assert code == 2
    one_line_error(stderr, "--setup with --config/--set")


def test_user_code_failing_inside_a_check_is_a_finding_and_the_others_still_run(tmp_path):
    body = TINY.replace(
        "def build():",
        "class Broken(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.layer = torch.nn.Linear(8, 4)\n\n"
        "    def forward(self, x):\n"
        "        return self.layer(x.view(-1, 7))\n\n\n"
        "def build():",
    ).replace(
        "model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))", "model = Broken()"
    )
    path = write(tmp_path, body)
    code, stdout, stderr = diagnose_setup(f"{path}:build", tmp_path, "--fail-on", "never")
    assert code == 0 and "Traceback" not in stdout + stderr, stderr
    report = json.loads((tmp_path / "report.json").read_text())
    failed = [f for f in report["findings"] if f["title"].startswith("your code failed")]
    assert (
        failed and "doctor_setup.py:" in failed[0]["title"] and "in forward" in failed[0]["title"]
    )
    statuses = {run["name"]: run["status"] for run in report["checks"]}
    assert statuses["sampler-class-mix"] == "pass" and statuses["dataset-imbalance"] == "pass"


def test_a_loss_that_is_not_a_scalar_is_named(tmp_path):
    body = TINY.replace(
        "loss_fn=nn.CrossEntropyLoss()", "loss_fn=nn.CrossEntropyLoss(reduction='none')"
    )
    path = write(tmp_path, body)
    diagnose_setup(f"{path}:build", tmp_path, "--only", "loss-bounds")
    (found,) = json.loads((tmp_path / "report.json").read_text())["findings"]
    assert "not a scalar" in found["title"] and "CrossEntropyLoss" in found["title"]


def tiny_setup(tmp_path) -> qd.TrainingSetup:
    namespace: dict = {}
    exec(compile(TINY, str(tmp_path / "tiny.py"), "exec"), namespace)
    return namespace["build"]()


def test_the_python_api_report_saves_renders_and_judges(tmp_path):
    report = qd.diagnose(tiny_setup(tmp_path))
    assert report.passed() and report.passed(fail_on="never")
    assert report.save_json(tmp_path / "r.json").is_file()
    assert json.loads((tmp_path / "r.json").read_text())["schema"] == "quad-doctor/report/v1"
    assert "<html" in report.save_html(tmp_path / "r.html").read_text()
    assert report._repr_html_().startswith("<!DOCTYPE html>")
    with pytest.raises(qd.QuadDoctorError, match="fail_on"):
        report.passed(fail_on="sometimes")


def test_diagnosis_changes_nothing_of_the_users(tmp_path):
    setup = tiny_setup(tmp_path)
    # a real step first, so the optimizer has state to keep, and a scheduler with a position
    inputs, labels = next(iter(setup.train_loader))
    setup.loss_fn(setup.model(inputs), labels).backward()
    setup.optimizer.step()
    setup.scheduler = torch.optim.lr_scheduler.StepLR(setup.optimizer, step_size=5)
    setup.model.get_submodule("0").requires_grad_(False)
    weights = {k: v.clone() for k, v in setup.model.state_dict().items()}
    flags = [p.requires_grad for p in setup.model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in setup.model.parameters()]
    optimizer = json.dumps(str(setup.optimizer.state_dict()))
    scheduler = setup.scheduler.state_dict()
    sampler = setup.train_loader.sampler
    dataset = setup.train_loader.dataset.tensors[0].clone()
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    rng = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())

    report = qd.diagnose(setup)

    assert len(report.checks) == 8
    after = setup.model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert [p.requires_grad for p in setup.model.parameters()] == flags
    for before, p in zip(grads, setup.model.parameters(), strict=True):
        assert (before is None and p.grad is None) or torch.equal(before, p.grad)
    assert json.dumps(str(setup.optimizer.state_dict())) == optimizer
    assert setup.scheduler.state_dict() == scheduler
    assert setup.train_loader.sampler is sampler
    assert torch.equal(setup.train_loader.dataset.tensors[0], dataset)
    assert random.getstate() == rng[0]
    assert np.array_equal(np.random.get_state()[1], rng[1])
    assert torch.equal(torch.get_rng_state(), rng[2])


def test_lr_range_test_runs_on_a_setup_whose_labels_are_read_through_the_dataset(tmp_path):
    # no `labels=`: a TensorDataset has no targets/labels attribute, so they are read once
    path = write(tmp_path, TINY.replace("        labels=labels,\n", ""))
    code, stdout, stderr = run(
        "lr-range-test", "--setup", f"{path}:build", "--iters", "30",
        "--json", str(tmp_path / "lr.json"), "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, stdout + stderr
    test = json.loads((tmp_path / "lr.json").read_text())["lr_range_test"]
    assert test["verdict"] in ("ok", "too-low", "too-high") and len(test["lr"]) >= 10
    assert (tmp_path / "run" / "lr_range_test.svg").is_file()
