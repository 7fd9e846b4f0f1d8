"""`diagnose --setup` end to end on the user-code matrix of tests/user_scenarios/setups.py.

Each scenario is a different user's own model, loss, optimizer, schedule and sampler; the doctor
must rank the planted root cause first, stay quiet on the healthy ones, and name the user's file
when their code breaks.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from cli_support import run

from quad_doctor.findings import Severity

SETUPS = Path(__file__).resolve().parents[1] / "user_scenarios" / "setups.py"
MATRIX = runpy.run_path(str(SETUPS))
EXPECTED = MATRIX["EXPECTED"]
FAULTS = [name for name, expected in EXPECTED.items() if expected is not None]
HEALTHY = [name for name, expected in EXPECTED.items() if expected is None]
# Checks that read only labels, parameters and the schedule: they run whatever the user's
# forward, loss or sampler does.
MODEL_FREE_CHECKS = ("dataset-imbalance", "frozen-parameters", "lr-schedule")


def diagnose_scenario(name: str, tmp_path: Path, *options: str) -> tuple[int, dict, str]:
    """Exit code, JSON report and stderr of `quad-doctor diagnose --setup setups.py:NAME`."""
    report_path = tmp_path / "r.json"
    code, _, stderr = run(
        "diagnose", "--setup", f"{SETUPS}:{name}", "--json", str(report_path),
        "--run-dir", str(tmp_path / "run"), *options,
    )  # fmt: skip
    assert report_path.is_file(), stderr
    return code, json.loads(report_path.read_text()), stderr


def outline(report: dict) -> list[str]:
    """The ranked findings in one line each, for assertion messages."""
    return [f"{f['rank']} {f['check']} {f['severity']}: {f['title']}" for f in report["findings"]]


def statuses(report: dict) -> dict[str, str]:
    return {check["name"]: check["status"] for check in report["checks"]}


def line_of(fragment: str) -> int:
    """The line of setups.py that holds `fragment` (first occurrence)."""
    lines = SETUPS.read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if fragment in line)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation, and on a busy
    two-core machine it made each diagnosis 10-50x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", FAULTS)
def test_the_planted_fault_ranks_first(name, tmp_path):
    check, least = EXPECTED[name]
    code, report, stderr = diagnose_scenario(name, tmp_path, "--fail-on", "never")
    assert code == 0, stderr
    assert report["findings"], f"{name}: no finding"
    top = report["findings"][0]
    assert top["check"] == check, outline(report)
    assert Severity.parse(top["severity"]) >= Severity.parse(least), outline(report)
    assert "error" not in statuses(report).values(), report["checks"]


@pytest.mark.parametrize("name", HEALTHY)
def test_a_healthy_setup_has_nothing_at_warning_or_above(name, tmp_path):
    code, report, stderr = diagnose_scenario(name, tmp_path, "--fail-on", "warning")
    assert code == 0, outline(report) or stderr
    assert [f for f in report["findings"] if f["severity"] != "info"] == []
    assert set(statuses(report).values()) == {"pass"}, report["checks"]


def test_the_single_class_sampler_gets_a_verified_stratified_sampler(tmp_path):
    _, report, _ = diagnose_scenario("single_class_sampler", tmp_path, "--fail-on", "never")
    top = report["findings"][0]
    assert top["verified"] is True
    assert "StratifiedBatchSampler" in top["code_change"]
    # the user's batches hold 32 samples (a few class remainders hold fewer): the fix keeps 32
    assert "batch_size=32" in top["code_change"], top["code_change"]
    assert "ln(B-1) = ln(31) = 3.4340" in top["title"], top["title"]
    assert top["evidence"]["single_class_batch_fraction"] == 1.0
    assert "ClassBatchSampler" in top["evidence"]["sampler"]


def test_a_forward_that_raises_is_named_at_its_line_and_the_other_checks_still_run(tmp_path):
    code, report, _ = diagnose_scenario("forward_raises", tmp_path)
    assert code == 1
    where = f"setups.py:{line_of('raise ValueError(')}"
    failures = [f for f in report["findings"] if where in f["title"]]
    assert failures, outline(report)
    assert all("ValueError" in f["title"] for f in failures)
    assert "expected windows of 64 samples, got 32" in failures[0]["title"]
    ran = statuses(report)
    assert ran["loss-bounds"] == "error"
    assert all(ran[name] == "pass" for name in ("data-integrity", "sampler-class-mix")), ran
    assert all(ran[name] == "pass" for name in MODEL_FREE_CHECKS), ran


def test_a_loss_that_is_not_a_scalar_is_named_with_the_users_function(tmp_path):
    code, report, _ = diagnose_scenario("loss_not_scalar", tmp_path)
    assert code == 1
    where = f"setups.py:{line_of('def per_sample_cross_entropy')}"
    top = report["findings"][0]
    assert top["severity"] == "error" and where in top["title"], outline(report)
    assert "shape (32,), not a scalar" in top["title"]
    ran = statuses(report)
    assert all(ran[name] == "pass" for name in ("data-integrity", *MODEL_FREE_CHECKS)), ran


def test_a_sampler_index_past_the_end_is_named_with_the_users_sampler(tmp_path):
    code, report, _ = diagnose_scenario("sampler_out_of_range", tmp_path)
    assert code == 1
    size = MATRIX["SIZE"]
    top = report["findings"][0]
    assert top["check"] == "sampler-class-mix", outline(report)
    assert f"yielded index {size}" in top["title"] and f"has {size} items" in top["title"]
    assert f"setups.py:{line_of('class ChunkBatchSampler')}" in top["title"]
    ran = statuses(report)
    assert ran["sampler-class-mix"] == "error"
    assert all(ran[name] == "pass" for name in ("data-integrity", *MODEL_FREE_CHECKS)), ran
