from __future__ import annotations

import json
import math

import pytest
from cli_support import one_line_error, run, sets

from quad_doctor.trainer.rundir import point_latest

CHEAP_CHECKS = "data-integrity,dataset-imbalance,sampler-class-mix,loss-bounds,lr-schedule"


@pytest.fixture(scope="module")
def diagnosed(small_dataset, tmp_path_factory):
    """One diagnosis of the original failure (single-class batches): its run directory and
    what `diagnose` printed."""
    run_dir = tmp_path_factory.mktemp("run")
    code, stdout, _ = run(
        "diagnose",
        *sets([f'data.path="{small_dataset}"', "train.batch_size=16", "train.sampler=sequential"]),
        "--only", CHEAP_CHECKS, "--run-dir", str(run_dir),
    )  # fmt: skip
    assert code == 1
    return run_dir, stdout


def test_report_renders_the_run_as_diagnose_printed_it(diagnosed):
    run_dir, printed = diagnosed
    code, stdout, _ = run("report", "--run-dir", str(run_dir))
    assert code == 0  # --fail-on never by default: rendering a report is no verdict
    lines = stdout.splitlines()
    assert lines[0] == "quad-doctor report"
    first = next(line for line in lines if "sampler-class-mix" in line)
    assert first.startswith(" 1  CRITICAL  sampler-class-mix  ")
    assert "loss-bounds" in stdout[stdout.index("explains:") :]
    # everything between the title and the summary, as diagnose showed it (after its progress bar)
    assert lines[1:-1] == printed.lstrip("\n").splitlines()[1:-2]


@pytest.mark.parametrize(("fail_on", "expected"), [("never", 0), ("critical", 1), ("warning", 1)])
def test_fail_on_sets_the_exit_code(diagnosed, fail_on, expected):
    run_dir, _ = diagnosed
    code, _, _ = run("report", "--run-dir", str(run_dir), "--fail-on", fail_on)
    assert code == expected


def test_report_reads_a_file_or_the_latest_run(diagnosed, tmp_path, monkeypatch):
    run_dir, _ = diagnosed
    saved = tmp_path / "saved.json"
    saved.write_text((run_dir / "report.json").read_text())
    code, stdout, _ = run("report", "--from", str(saved))
    assert code == 0 and "CRITICAL  sampler-class-mix" in stdout

    monkeypatch.chdir(tmp_path)
    code, _, stderr = run("report")
    assert code == 2
    one_line_error(stderr, "runs/latest does not exist")
    (tmp_path / "runs").mkdir()
    point_latest(run_dir)
    code, stdout, _ = run("report")
    assert code == 0 and "CRITICAL  sampler-class-mix" in stdout


def training(status, stop_reason, final_loss):
    """The live doctor's record of a 30-epoch run at batch 32 whose loss ends at `final_loss`."""
    losses = [3.44 + (final_loss - 3.44) * epoch / 30 for epoch in range(31)]
    return {
        "run_dir": "runs/live",
        "status": status,
        "stop_reason": stop_reason,
        "epoch": 30,
        "num_epochs": 30,
        "global_step": 1110,
        "collapse_value": math.log(31),
        "batch_size": 32,
        "metrics": [
            {"epoch": epoch, "train_loss": loss if epoch else None, "val_accuracy": 0.4, "lr": 1e-5}
            for epoch, loss in enumerate(losses)
        ],
        "steps": {"step": [1110], "loss": [final_loss], "lr": [1e-6]},
        "events": [
            {
                "step": 8 * (i + 1),
                "epoch": 1,
                "rule": "sampler-class-mix",
                "severity": severity,
                "message": "one class per batch",
                "evidence": {},
                "time": "2026-11-24T10:00:00",
            }
            for i, severity in enumerate(["critical", "warning", "critical"] + ["info"] * 4)
        ],  # fmt: skip
        "doctor": {"time_s": 0.12, "overhead_fraction": 0.006, "step_time_ms": 22.0},
    }


def with_training(diagnosed, tmp_path, record):
    """A real diagnosis report carrying a training record, saved as a file."""
    data = json.loads((diagnosed[0] / "report.json").read_text())
    data["training"] = record
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    return path


def test_a_training_report_shows_status_metrics_loss_events_and_overhead(diagnosed, tmp_path):
    record = training("stopped", "the loss is pinned at ln(B-1)", 3.4335)
    code, stdout, _ = run("report", "--from", str(with_training(diagnosed, tmp_path, record)))
    assert code == 0
    lines = stdout.splitlines()
    status = next(line for line in lines if line.startswith("training"))
    assert "stopped: the loss is pinned at ln(B-1) · 30/30 epochs · step 1110" in status
    assert lines.index(status) < next(i for i, line in enumerate(lines) if "CRITICAL" in line)
    epochs = [line.split()[0] for line in lines if line.lstrip()[:1].isdigit() and "e-05" in line]
    assert len(epochs) == 12 and epochs[-1] == "30"  # the first (metrics 0) and the last
    assert "19 more rows in metrics.jsonl" in stdout
    assert "3.4335, pinned at ln(31) = 3.4340" in stdout
    assert "2 critical, 1 warning, 4 info" in stdout
    assert sum("sampler-class-mix  one class per batch" in line for line in lines) == 5
    assert "step 8  CRITICAL" in stdout and "and 2 more in events.jsonl" in stdout
    assert "0.6% of step time" in stdout


def test_a_finished_run_says_how_far_below_the_collapse_value_it_ended(diagnosed, tmp_path):
    record = training("finished", None, 1.5165) | {"events": []}
    code, stdout, _ = run("report", "--from", str(with_training(diagnosed, tmp_path, record)))
    assert code == 0
    assert "finished · 30/30 epochs" in stdout
    assert "1.5165, 1.9175 below ln(31) = 3.4340" in stdout
    assert "none" in next(line for line in stdout.splitlines() if line.startswith("events"))


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ["report file not found"]),
        ('{"schema": "quad-doctor/report/v1",\n "findings": [,]}', ["not valid JSON", "line 2"]),
        ('{"epoch": 0, "train_loss": null}', ["not a quad-doctor report"]),
        ('{"schema": "quad-doctor/report/v1", "findings": []}', ["missing 'checks'"]),
    ],
)
def test_bad_input_is_one_line_naming_the_file(tmp_path, content, fragments):
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    code, _, stderr = run("report", "--run-dir", str(tmp_path))
    assert code == 2
    one_line_error(stderr, str(path), *fragments)
