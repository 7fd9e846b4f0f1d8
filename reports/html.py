"""The HTML report: one self-contained page (inline CSS and SVG, no fetches) from the report model.

Every chart is drawn from data the report already holds; nothing here diagnoses. User strings
(class names, paths, sample ids, config values) reach the page only through jinja2's autoescape.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from quad_doctor.findings import Finding, Report
from quad_doctor.reports import plots
from quad_doctor.reports.console import patch_toml, summary_line
from quad_doctor.trainer.rundir import write_text_atomic

TEMPLATE = "report.html.j2"
# The page's one script: opens the collapsed sections before printing. The Content-Security-Policy
# allows this script by its hash and nothing else, so even a broken escape could not run one.
PRINT_SCRIPT = (
    'window.addEventListener("beforeprint", function () {'
    ' document.querySelectorAll("details").forEach(function (d) { d.open = true; }); });'
)
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(PRINT_SCRIPT.encode()).digest()).decode()
SEVERITY_WORDS = {
    "critical": "Critical",
    "error": "Error",
    "warning": "Warning",
    "info": "Info",
}


@dataclass(frozen=True)
class Chart:
    """One picture on the page: an anchor id, its caption and its inline SVG."""

    id: str
    caption: str
    svg: str


def render(report: Report, path: str | Path | None = None, title: str = "quad-doctor") -> str:
    """The report as one HTML page; also written to `path` (atomically) when one is given."""
    template = _environment().get_template(TEMPLATE)
    with _cycle_collector_paused():
        drawn = list(charts(report))
    page = template.render(
        title=title,
        report=report,
        verdict=_verdict(report),
        summary=summary_line(report).plain,
        print_script=PRINT_SCRIPT,
        script_hash=SCRIPT_HASH,
        findings=[_finding_view(r.finding, r.rank, r.explained) for r in report.findings],
        charts=drawn,
        context=report.context,
        config_rows=_flatten(report.context.get("config", {})),
        training=report.training,
    )
    if path is not None:
        write_text_atomic(path, page)
    return page


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Python's cycle collector off for the block, then as it was.

    Drawing makes objects by the hundred thousand (matplotlib's modules on the first page, then
    every artist), enough to set off full collections, and in a process that holds torch each
    walks every object it has (~0.15 s): the first page set off two. The figures' garbage is
    collected at the next collection instead."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@functools.cache
def _environment() -> Environment:
    """The templates' environment, built once: it caches the compiled templates."""
    environment = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["toml"] = patch_toml
    environment.filters["cell"] = _cell
    return environment


def charts(report: Report) -> Iterator[Chart]:
    """Every chart the report holds data for, in reading order."""
    measured = report.measurements
    classes = report.context.get("classes", [])
    makers: list[tuple[str, str, Callable[[], Any] | None]] = []
    if report.training:
        training = report.training
        makers += [
            (
                "loss",
                "Training loss per step, the ln(B-1) collapse line and the batch floor; "
                "markers on the top edge are the live doctor's events.",
                lambda: plots.training_loss_figure(training),
            ),
            (
                "accuracy",
                "Validation accuracy per epoch.",
                lambda: plots.training_accuracy_figure(training),
            ),
            (
                "lr-schedule",
                "The learning rate applied at each step.",
                lambda: plots.training_lr_figure(training),
            ),
        ]
    if "class_counts" in measured:
        counts = measured["class_counts"]
        makers.append(
            (
                "class-counts",
                "Samples of each class in the training and validation splits.",
                lambda: plots.class_counts_figure(counts),
            )
        )
    if "sampler_batches" in measured:
        batches = measured["sampler_batches"]
        makers += [
            (
                "classes-per-batch",
                "How many classes each batch of the sampler's first epoch "
                "holds; one class leaves SupCon no negatives.",
                lambda: plots.classes_per_batch_figure(batches, len(classes)),
            ),
            (
                "batch-composition",
                "The first batches' labels, stacked by class.",
                lambda: plots.batch_composition_figure(batches, classes),
            ),
        ]
    if report.lr_range_test and report.lr_range_test.get("lr"):
        test = report.lr_range_test
        makers.append(
            (
                "lr-range-test",
                "The LR range test: held-out loss against the learning "
                "rate, with the suggestion and the configured LR marked.",
                lambda: plots.lr_range_figure(test),
            )
        )
    if measured.get("gradient_norms"):
        norms = measured["gradient_norms"]
        makers.append(
            (
                "gradient-norms",
                "The largest gradient norm of each module over the gradient-flow probe's steps.",
                lambda: plots.gradient_norms_figure(norms),
            )
        )
    for chart_id, caption, make in makers:
        assert make is not None
        yield Chart(chart_id, caption, plots.svg_markup(make(), chart_id))


def _verdict(report: Report) -> dict[str, Any]:
    """The banner: the worst severity and the root cause in one sentence."""
    worst = report.worst
    if worst is None:
        return {"severity": "ok", "word": "Healthy", "sentence": "No problems found."}
    top = report.findings[0].finding
    explained = len(report.findings[0].explained)
    also = f" It explains {explained} other finding{'s' * (explained != 1)}." if explained else ""
    return {
        "severity": str(worst),
        "word": SEVERITY_WORDS[str(worst)],
        "sentence": f"Root cause ({top.check}): {top.title}.{also}",
    }


def _finding_view(finding: Finding, rank: int | None, explained=()) -> dict[str, Any]:
    verification = finding.verification
    return {
        "rank": rank,
        "check": finding.check,
        "severity": str(finding.severity),
        "word": SEVERITY_WORDS[str(finding.severity)],
        "title": finding.title,
        "evidence": list(finding.evidence.items()),
        "remedy": finding.remedy,
        "patch": finding.config_patch,
        "code": finding.code_change,
        "verified": None if verification is None else verification.verified,
        "verification": verification,
        "explained": [_finding_view(f, None) for f in explained],
    }


def _cell(value: Any) -> str:
    """An evidence value as short text for a table cell (lists and dicts spelled out)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        separator = "\n" if value and all(isinstance(v, str) for v in value) else ", "
        shown = separator.join(_cell(v) for v in value[:12])
        return shown + (f", … ({len(value)} in all)" if len(value) > 12 else "")
    return "null" if value is None else str(value)


def _flatten(config: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """`{"train": {"batch_size": 32}}` as `[("train.batch_size", 32)]`."""
    rows: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows
