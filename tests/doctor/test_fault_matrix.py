"""The public fault matrix (tests/fault_scenarios.toml), end to end through the CLI."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quad_doctor.cli import app
from quad_doctor.engine import check_names

SCENARIOS = tomllib.loads((Path(__file__).parents[1] / "fault_scenarios.toml").read_text())
# Small data keeps each diagnosis to a few seconds; scenario settings come after and win.
SMALL = ["data.synthetic.num_samples=240", "train.batch_size=16"]

runner = CliRunner()


def diagnose(tmp_path, overrides):
    report_path = tmp_path / "report.json"
    args = ["diagnose", "--json", str(report_path), "--run-dir", str(tmp_path / "run")]
    for override in overrides:
        args += ["--set", override]
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1), result.stderr
    return result.exit_code, json.loads(report_path.read_text())


@pytest.mark.parametrize("scenario", SCENARIOS["scenario"], ids=lambda s: s["name"])
def test_each_fault_ranks_its_root_cause_first(tmp_path, scenario):
    code, report = diagnose(tmp_path, [*SMALL, *scenario["set"]])
    top = report["findings"][0]
    summary = [(f["check"], f["severity"], f["title"]) for f in report["findings"]]
    assert (top["check"], top["severity"]) == (scenario["expected"], scenario["severity"]), summary
    assert code == 1
    assert all(c["status"] != "error" for c in report["checks"]), report["checks"]
    # every root cause that comes with a patch has had the patch tried and seen to work
    assert top["config_patch"] and top["verified"] is True, top["verification"]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["data.synthetic.seed=1", "train.seed=1"],
        ["data.synthetic.seed=2", "train.seed=2", "train.batch_size=32"],
        ["train.batch_size=24", "train.sampler='random'"],
    ],
    ids=["seed0-b16", "seed1-b16", "seed2-b32", "random-b24"],
)
def test_healthy_configs_pass_with_every_check_run(tmp_path, overrides):
    code, report = diagnose(tmp_path, [*SMALL, *overrides])
    serious = [f["title"] for f in report["findings"] if f["severity"] in ("critical", "error")]
    assert code == 0 and not serious
    assert [c["name"] for c in report["checks"]] == check_names()
    assert all(c["status"] in ("pass", "fail") for c in report["checks"]), report["checks"]
