"""The instant commands: `--help`, `checks`, `explain` and `report` never import torch & co.

Importing torch alone takes over a second; these commands answer in a fraction of that because
the CLI, the package and the catalog of manuals import nothing heavy. An import check, not a
timing: docs/benchmarks.md has the times.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import quad_doctor
from quad_doctor import catalog
from quad_doctor.checks import ALL_CHECKS
from quad_doctor.findings import CheckRun, Finding, RankedFinding, Report, Severity
from quad_doctor.reports import json as json_report
from quad_doctor.rules import LIVE_ONLY, LIVE_RULES

# What the instant commands must not import: the frameworks, the plotting and templating of the
# HTML report, and the trainer, checks and rules (which import torch).
HEAVY = (
    "torch",
    "numpy",
    "pandas",
    "matplotlib",
    "jinja2",
    "lightning",
    "pytorch_lightning",
    "transformers",
    "quad_doctor.checks",
    "quad_doctor.rules",
    "quad_doctor.engine",
    "quad_doctor.context",
    "quad_doctor.trainer.loop",
)
# Runs the console script's `main` with ARGS, then prints which HEAVY modules got imported.
RUN_AND_LIST = f"""
import json, sys
from quad_doctor.cli import main
sys.argv = ["quad-doctor", *sys.argv[1:]]
code = None
try:
    main()
except SystemExit as stopped:
    code = stopped.code
heavy = [name for name in {HEAVY!r} if name in sys.modules]
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


@pytest.fixture(scope="module")
def saved_report(tmp_path_factory):
    """A saved diagnosis with a ranked finding, an explained one and a training record."""
    finding = Finding(
        "sampler-class-mix",
        Severity.CRITICAL,
        "every batch holds one class",
        {"single_class_batch_fraction": 1.0},
        "use the stratified sampler",
        {"train.sampler": "stratified"},
        ("loss-bounds",),
    )
    explained = Finding("loss-bounds", Severity.ERROR, "the loss cannot fall", {"floor": 3.434})
    report = Report(
        (RankedFinding(1, finding, (explained,)),),
        (CheckRun("sampler-class-mix", "fail", 0.1), CheckRun("loss-bounds", "fail", 0.2)),
        training={
            "run_dir": "runs/x",
            "status": "stopped",
            "epoch": 1,
            "num_epochs": 2,
            "global_step": 37,
        },
    )
    path = tmp_path_factory.mktemp("saved") / "report.json"
    json_report.render(report, path)
    return path


def _run(*args: str) -> tuple[int, list[str]]:
    """The exit code of `quad-doctor ARGS` in a fresh process, and the heavy modules it imported."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, *args], capture_output=True, text=True, timeout=120
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["code"], result["heavy"]


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["checks"],
        ["explain", "loss-bounds"],  # a check, with its live rule
        ["explain", "loss-pinned"],  # a live rule of its own
        ["explain", "loss-bound"],  # an unknown name: the one-line error
        ["report", "--from", "SAVED"],
        ["report", "--run-dir", "RUN_DIR"],
    ],
    ids=" ".join,
)
def test_the_instant_commands_import_nothing_heavy(args, saved_report):
    places = {"SAVED": str(saved_report), "RUN_DIR": str(saved_report.parent)}
    code, heavy = _run(*(places.get(arg, arg) for arg in args))
    assert code == (2 if args[-1] == "loss-bound" else 0)
    assert heavy == []


def test_import_quad_doctor_is_light_and_its_public_names_load_when_asked_for():
    script = (
        "import sys, quad_doctor\n"
        "light = 'torch' not in sys.modules\n"
        "from quad_doctor import TrainingSetup\n"
        "print(light, 'torch' in sys.modules, TrainingSetup.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.split() == ["True", "True", "quad_doctor.trainer.setup"]
    for name in quad_doctor.__all__:
        assert name in dir(quad_doctor) and getattr(quad_doctor, name) is not None
    assert quad_doctor.StratifiedBatchSampler.__module__ == "quad_doctor.trainer.samplers"
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        quad_doctor.Trainer  # noqa: B018


def test_the_catalog_reads_what_the_registries_hold():
    assert [(c.name, c.order, c.phase, c.doc) for c in catalog.checks()] == [
        (c.name, c.order, c.phase, c.doc()) for c in ALL_CHECKS
    ]
    assert [(r.name, r.order, r.phase, r.doc) for r in catalog.live_rules()] == [
        (r.name, r.order, "", r.doc()) for r in LIVE_RULES
    ]
    assert [r.name for r in catalog.live_only_rules()] == [r.name for r in LIVE_ONLY]


def test_the_lr_range_default_the_help_shows_is_the_tests():
    from quad_doctor.cli import LR_RANGE_ITERS
    from quad_doctor.lr_range import DEFAULT_ITERS

    assert LR_RANGE_ITERS == DEFAULT_ITERS
