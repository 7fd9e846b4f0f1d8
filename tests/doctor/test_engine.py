from __future__ import annotations

import pytest

from quad_doctor.checks.sampler_class_mix import SamplerClassMix
from quad_doctor.engine import diagnose, select_checks
from quad_doctor.findings import Finding, Severity, rank_findings
from quad_doctor.trainer.config import load_config
from quad_doctor.trainer.errors import UsageError

ORDER = {"data-integrity": 10, "dataset-imbalance": 20, "sampler-class-mix": 30, "loss-bounds": 40}


def finding(check, severity, explains=()):
    return Finding(check=check, severity=severity, title=check, explains=explains)


def test_ranking_is_severity_then_causal_order():
    ranked = rank_findings(
        [
            finding("loss-bounds", Severity.ERROR),
            finding("sampler-class-mix", Severity.WARNING),
            finding("dataset-imbalance", Severity.ERROR),
        ],
        ORDER,
    )
    assert [r.finding.check for r in ranked] == [
        "dataset-imbalance",
        "loss-bounds",
        "sampler-class-mix",
    ]
    assert [r.rank for r in ranked] == [1, 2, 3]


def test_explained_findings_nest_under_their_cause():
    ranked = rank_findings(
        [
            finding("loss-bounds", Severity.CRITICAL),
            finding("sampler-class-mix", Severity.CRITICAL, explains=("loss-bounds",)),
        ],
        ORDER,
    )
    assert len(ranked) == 1
    assert ranked[0].finding.check == "sampler-class-mix"
    assert [f.check for f in ranked[0].explained] == ["loss-bounds"]


def test_unknown_check_names_are_usage_errors():
    with pytest.raises(UsageError, match="did you mean 'sampler-class-mix'"):
        select_checks(only=["sampler-clas-mix"])


def test_the_original_failure_ranks_the_sampler_first(small_overrides):
    report = diagnose(load_config(overrides=[*small_overrides, "train.sampler=sequential"]))
    top = report.findings[0].finding
    assert top.check == "sampler-class-mix" and top.severity is Severity.CRITICAL
    assert top.config_patch == {"train.sampler": "stratified"}
    assert report.to_dict()["schema"] == "quad-doctor/report/v1"


def test_a_crashing_check_is_reported_and_the_others_still_run(monkeypatch, small_overrides):
    def explode(self, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(SamplerClassMix, "run", explode)
    report = diagnose(load_config(overrides=small_overrides))
    status = {run.name: (run.status, run.message) for run in report.checks}
    assert status["sampler-class-mix"] == ("error", "RuntimeError: boom")
    assert status["dataset-imbalance"][0] == "pass"
