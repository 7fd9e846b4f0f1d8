from __future__ import annotations

import json
import re

import pytest
from cli_support import one_line_error, run, sets

from quad_doctor.checks import data_integrity
from quad_doctor.engine import check_names


def test_the_original_failure_is_ranked_first_with_evidence_and_a_verified_patch(
    tmp_path, small_overrides
):
    report_path = tmp_path / "report.json"
    code, stdout, _ = run(
        "diagnose",
        *sets(small_overrides),
        "--set",
        "train.sampler=sequential",
        "--json",
        str(report_path),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert code == 1
    first = stdout.index("sampler-class-mix")
    assert "CRITICAL" in stdout[first - 20 : first]
    assert "Batch 0 labels - unique: [0], counts: [16]" in stdout
    assert "ln(B-1) = ln(15) = 2.7081" in stdout
    assert 'train.sampler = "stratified"' in stdout
    assert "fix verified" in stdout
    summary = stdout.splitlines()[-2]  # the summary line, before the report's path
    assert re.match(r"2 critical, \d+ errors?, \d+ warnings? · \d+ checks in [\d.]+ s", summary)
    report = json.loads(report_path.read_text())
    assert report["schema"] == "quad-doctor/report/v1"
    top = report["findings"][0]
    assert (top["rank"], top["check"], top["severity"]) == (1, "sampler-class-mix", "critical")
    assert top["verified"] is True and top["config_patch"] == {"train.sampler": "stratified"}
    assert "loss-bounds" in [f["check"] for f in top["explained"]]
    assert [c["name"] for c in report["checks"]] == check_names()
    # the run directory keeps the same report and the resolved config
    assert json.loads((tmp_path / "run" / "report.json").read_text()) == report
    assert (tmp_path / "run" / "config.toml").is_file()


@pytest.mark.parametrize(("fail_on", "expected"), [("never", 0), ("critical", 1), ("error", 1)])
def test_fail_on_sets_the_exit_code(tmp_path, small_overrides, fail_on, expected):
    code, _, _ = run(
        "diagnose",
        *sets(small_overrides),
        "--set",
        "train.sampler=sequential",
        "--only",
        "sampler-class-mix,dataset-imbalance",
        "--fail-on",
        fail_on,
        "--run-dir",
        str(tmp_path),
    )
    assert code == expected


def test_only_and_skip_choose_the_checks(tmp_path, small_overrides):
    report_path = tmp_path / "r.json"
    args = [
        "diagnose",
        *sets(small_overrides),
        "--json",
        str(report_path),
        "--run-dir",
        str(tmp_path),
    ]
    code, _, _ = run(*args, "--only", "dataset-imbalance", "--only", "sampler-class-mix")
    assert code == 0
    ran = [c["name"] for c in json.loads(report_path.read_text())["checks"]]
    assert ran == ["dataset-imbalance", "sampler-class-mix"]
    run(*args, "--skip", "dataset-imbalance")
    ran = [c["name"] for c in json.loads(report_path.read_text())["checks"]]
    assert ran == [name for name in check_names() if name != "dataset-imbalance"]


def test_full_scan_reads_every_row_and_says_so(tmp_path, small_overrides, monkeypatch):
    # a budget this small samples even the small dataset's video (0.4 MiB of 240 rows)
    monkeypatch.setattr(data_integrity, "SCAN_ROWS", 48)
    monkeypatch.setattr(data_integrity, "SIGNAL_ROWS", 48)
    monkeypatch.setattr(data_integrity, "FULL_STREAM_BYTES", 64 * 2**10)
    report_path = tmp_path / "r.json"
    args = ["diagnose", *sets(small_overrides), "--only", "data-integrity", "--json"]
    args += [str(report_path), "--run-dir", str(tmp_path)]

    def coverage(*extra):
        assert run(*args, *extra)[0] == 0
        return json.loads(report_path.read_text())["measurements"]["data_integrity_coverage"]

    assert coverage()["sampling"].startswith("streams over 0 MiB on one seeded-random row")
    assert coverage("--full-scan")["sampling"] == "every row of every stream"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--only", "sampler-clas-mix"], ["--only", "did you mean 'sampler-class-mix'"]),
        (["--skip", "nope"], ["--skip", "unknown check 'nope'"]),
        (["--set", "train.batchsize=3"], ["did you mean 'train.batch_size'"]),
        (["--set", "data.path='/nonexistent/data'"], ["/nonexistent/data"]),
        (["--config", "missing.toml"], ["missing.toml", "config file not found"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, fragments):
    report_path = tmp_path / "r.json"
    code, _, stderr = run(
        "diagnose", *args, "--json", str(report_path), "--run-dir", str(tmp_path / "run")
    )
    assert code == 2
    one_line_error(stderr, *fragments)
    assert not report_path.exists() and not (tmp_path / "run").exists()


def test_checks_lists_every_check_in_causal_order():
    code, stdout, _ = run("checks")
    assert code == 0
    positions = [stdout.index(name) for name in check_names()]
    assert positions == sorted(positions)


def test_explain_prints_the_manual_and_rejects_unknown_names():
    code, stdout, _ = run("explain", "sampler-class-mix")
    assert code == 0
    for heading in ("What it checks:", "Why it matters:", "Example:", "Fix:"):
        assert heading in stdout
    code, _, stderr = run("explain", "sampler")
    assert code == 2
    one_line_error(stderr, "unknown check 'sampler'")


def test_a_broken_dataset_or_model_mismatch_is_one_line_exit_2(
    tmp_path, small_dataset, truncated_dataset
):
    code, _, stderr = run(
        "diagnose", "--set", f'data.path="{truncated_dataset}"', "--run-dir", str(tmp_path)
    )
    assert code == 2
    one_line_error(stderr, "sensor.npy")
    # token ids beyond the text encoder's vocabulary surface while the model is built
    code, _, stderr = run(
        "diagnose",
        "--set",
        f'data.path="{small_dataset}"',
        "--set",
        "model.text.vocab_size=10",
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert code == 2
    one_line_error(stderr, "model.text.vocab_size", "text.npy")
    assert not (tmp_path / "run").exists()
