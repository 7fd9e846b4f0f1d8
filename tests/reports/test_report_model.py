from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from test_console import sample_report as console_sample_report

from quad_doctor.findings import Report, Severity
from quad_doctor.trainer.errors import UsageError

ORDER = {"sampler-class-mix": 30, "loss-bounds": 40, "lr-schedule": 60}
TRAINING = {
    "run_dir": "runs/sequential",
    "status": "stopped",
    "stop_reason": "the loss is pinned at ln(B-1)",
    "epoch": 1,
    "num_epochs": 30,
    "global_step": 37,
    "collapse_value": 3.4339872044851463,
    "batch_size": 32,
    "metrics": [
        {"epoch": 0, "train_loss": None, "val_accuracy": 0.44, "lr": 1e-7},
        {"epoch": 1, "train_loss": 3.4335, "val_accuracy": 0.5, "lr": 1e-5, "step_time_ms": 25.0},
    ],
    "steps": {"step": [1, 2], "loss": [3.44, 3.43], "lr": [1e-7, 2e-7], "floor": [3.43, 3.43]},
    "events": [
        {
            "step": 8,
            "epoch": 1,
            "rule": "sampler-class-mix",
            "severity": "critical",
            "message": "32 of 37 batches hold one class",
            "evidence": {"single_class_batch_fraction": 0.86},
            "time": "2026-11-24T10:00:00",
        }
    ],
    "doctor": {"time_s": 0.12, "overhead_fraction": 0.006, "step_time_ms": 22.0},
}


def sample_report():
    """test_console's report, with everything a report can carry."""
    return dataclasses.replace(
        console_sample_report(),
        lr_range_test={"lr": [1e-6, 1e-5], "loss": [3.4, 3.3], "verdict": "not-lr"},
        training=TRAINING,
    )


def test_a_report_survives_the_round_trip_through_json():
    report = sample_report()
    assert Report.from_dict(report.to_dict()).to_dict() == report.to_dict()
    loaded = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert loaded.to_dict() == report.to_dict()
    assert loaded.findings[0].explained[0].check == "loss-bounds"
    assert loaded.findings[0].finding.verification == report.findings[0].finding.verification
    assert loaded.worst is Severity.CRITICAL and loaded.training == TRAINING


def test_a_report_written_before_training_existed_still_loads():
    data = sample_report().to_dict()
    del data["training"], data["lr_range_test"], data["context"]
    loaded = Report.from_dict(data)
    assert loaded.training is None and loaded.lr_range_test is None and loaded.context == {}


def broken(change):
    data = copy.deepcopy(sample_report().to_dict())
    change(data)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "not a quad-doctor report (no schema"),
        (broken(lambda d: d.pop("schema")), "not a quad-doctor report (no schema"),
        (broken(lambda d: d.update(schema="v2")), "schema 'v2', expected"),
        (broken(lambda d: d.pop("findings")), "report: missing 'findings'"),
        (broken(lambda d: d.pop("checks")), "report: missing 'checks'"),
        (broken(lambda d: d.update(checks={})), "report.checks: expected list, got object"),
        (
            broken(lambda d: d["findings"][0].update(severity="fatal")),
            "findings[0].severity: unknown 'fatal' (one of critical, error, warning, info)",
        ),
        (
            broken(lambda d: d["findings"][0]["explained"][0].pop("title")),
            "findings[0].explained[0]: missing 'title'",
        ),
        (
            broken(lambda d: d["findings"][0]["verification"].update(verified="yes")),
            "findings[0].verification.verified: expected boolean, got string",
        ),
        (
            broken(lambda d: d["findings"][1].update(rank=True)),
            "findings[1].rank: expected integer, got boolean",
        ),
        (broken(lambda d: d["checks"].append("loss-bounds")), "checks[2]: expected an object"),
        (broken(lambda d: d.update(training=[])), "report.training: expected object or null"),
        (broken(lambda d: d["training"].pop("status")), "training: missing 'status'"),
        (
            broken(lambda d: d["training"].update(epoch=1.5)),
            "training.epoch: expected integer, got number",
        ),
    ],
)
def test_data_that_is_not_a_v1_report_is_a_usage_error_naming_what_is_wrong(data, message):
    with pytest.raises(UsageError) as error:
        Report.from_dict(data)
    assert message in str(error.value) and "\n" not in str(error.value)
