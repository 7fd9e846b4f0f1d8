from __future__ import annotations

from io import StringIO

from rich.console import Console

from quad_doctor.findings import CheckRun, Finding, Report, Severity, Verification, rank_findings
from quad_doctor.reports.console import patch_toml, render

ORDER = {"sampler-class-mix": 30, "loss-bounds": 40, "lr-schedule": 60}


def rendered(report):
    out = StringIO()
    render(report, Console(file=out, width=100, color_system=None))
    return out.getvalue()


def sample_report():
    cause = Finding(
        "sampler-class-mix",
        Severity.CRITICAL,
        "89% of batches hold a single class",
        {"first_batches": ["Batch 0 labels - unique: [0], counts: [32]"], "batches": 37},
        "Use the stratified sampler.",
        {"train.sampler": "stratified"},
        ("loss-bounds",),
        Verification(True, {"sampler-class-mix": "pass", "loss-bounds": "pass"}),
    )
    effect = Finding("loss-bounds", Severity.CRITICAL, "the loss cannot move")
    warning = Finding(
        "lr-schedule",
        Severity.WARNING,
        "one step moves weights by 14 %",
        {"curve": [[0, 1e-7]] * 50},  # long lists stay in the JSON report
        config_patch={"train.learning_rate": 1e-4},
        verification=Verification(False, {"lr-schedule": "fail"}, ("still too large",)),
    )
    return Report(
        findings=rank_findings([warning, effect, cause], ORDER),
        checks=(CheckRun("sampler-class-mix", "fail", 0.01), CheckRun("lr-schedule", "error", 0.0)),
        context={"config_source": "embedded default", "device": "cpu"},
        duration_s=6.3,
    )


def test_the_report_reads_top_down_cause_evidence_patch_and_summary():
    text = rendered(sample_report())
    lines = text.splitlines()
    assert "embedded default" in text and "cpu" in text
    first = next(i for i, line in enumerate(lines) if "sampler-class-mix" in line and "89%" in line)
    assert lines[first].lstrip().startswith("1") and "CRITICAL" in lines[first]
    assert "Batch 0 labels - unique: [0], counts: [32]" in text
    assert 'train.sampler = "stratified"' in text
    assert "fix verified: with the patch applied, sampler-class-mix and loss-bounds pass" in text
    explained = next(i for i, line in enumerate(lines) if "the loss cannot move" in line)
    second = next(i for i, line in enumerate(lines) if "one step moves" in line)
    assert first < explained < second  # the symptom sits under its cause, before rank 2
    assert lines[explained].startswith("    ")
    assert "fix not verified" in text and "still too large" in text
    assert "[0, 1e-07]" not in text
    assert lines[-1] == "2 critical, 0 errors, 1 warning · 2 checks in 6.3 s · 1 crashed"


def test_a_clean_report_says_so():
    report = Report(findings=(), checks=(CheckRun("sampler-class-mix", "pass", 0.01),))
    text = rendered(report)
    assert "No problems found." in text
    assert text.splitlines()[-1] == "0 critical, 0 errors, 0 warnings · 1 check in 0.0 s"


def test_patches_are_toml_lines_with_dotted_keys():
    assert patch_toml({"train.sampler": "stratified", "train.batch_size": 12}) == (
        'train.sampler = "stratified"\ntrain.batch_size = 12'
    )
