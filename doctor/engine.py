"""The engine: run the checks in causal order, time each, verify remedies, rank what they find."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quad_doctor.checks import ALL_CHECKS, Check
from quad_doctor.checks.base import SkipCheck
from quad_doctor.context import DiagnosisContext, UserCodeError, isolated_rng
from quad_doctor.findings import CheckRun, Finding, Report, Severity, Verification, rank_findings
from quad_doctor.trainer.config import Config, patched_config
from quad_doctor.trainer.dataset import Manifest
from quad_doctor.trainer.errors import QuadDoctorError, UsageError
from quad_doctor.trainer.setup import TrainingSetup
from quad_doctor.user_setup import user_frame

# Phases cheap enough to re-run on a patched config: no training steps.
CHEAP_PHASES = ("data", "model")

# Called as each check starts: (check name, index, number of checks).
ProgressHook = Callable[[str, int, int], None]


def check_names() -> list[str]:
    """Every check's name, in causal order."""
    return [check.name for check in ALL_CHECKS]


def select_checks(only: Sequence[str] = (), skip: Sequence[str] = ()) -> tuple[type[Check], ...]:
    """The checks `--only`/`--skip` leave, in causal order; unknown names are usage errors."""
    names = check_names()
    for option, given in (("--only", only), ("--skip", skip)):
        for name in given:
            if name not in names:
                raise UsageError(f"{option}: unknown check '{name}'{_suggestion(name)}")
    return tuple(
        check for check in ALL_CHECKS if (not only or check.name in only) and check.name not in skip
    )


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, check_names(), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def run_check(check: type[Check], ctx: DiagnosisContext) -> tuple[CheckRun, list[Finding]]:
    """Run one check: its findings and how it ran. Bad input propagates as `QuadDoctorError`;
    any other exception becomes status `error` with its message. When the user's own code raised
    it (their forward, loss, dataset or sampler), or broke the setup's contract, it is also a
    finding naming the error and where in their code it happened."""
    started = time.perf_counter()
    try:
        with isolated_rng(ctx.seed, ctx.device):
            found = list(check().run(ctx))
    except SkipCheck as exc:
        return CheckRun(check.name, "skipped", time.perf_counter() - started, str(exc)), []
    except UserCodeError as exc:
        finding = _user_code_finding(check, str(exc), "")
        return CheckRun(check.name, "error", time.perf_counter() - started, str(exc)), [finding]
    except QuadDoctorError:
        raise
    except Exception as exc:  # a crashing check must not hide the others' findings
        message = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
        where = user_frame(exc) if ctx.user_code else ""
        run = CheckRun(
            check.name,
            "error",
            time.perf_counter() - started,
            f"{message} (at {where})" if where else message,
        )
        if where:
            return run, [_user_code_finding(check, message, where)]
        return run, []
    status = "fail" if any(f.severity >= Severity.WARNING for f in found) else "pass"
    return CheckRun(check.name, status, time.perf_counter() - started), found


def _user_code_finding(check: type[Check], message: str, where: str) -> Finding:
    """A check could not run because the user's code failed inside it."""
    at = f" at {where}" if where else ""
    return Finding(
        check=check.name,
        severity=Severity.ERROR,
        title=f"your code failed while {check.name} ran: {message}{at}",
        evidence={"error": message, "where": where or None},
        remedy="Training would fail the same way: fix the error where it happened (run "
        "`quad-doctor diagnose --setup ... --debug` for the whole traceback).",
    )


def verify(
    finding: Finding,
    config: Config | None,
    options: dict[str, dict[str, Any]] | None = None,
    setup: TrainingSetup | None = None,
    full_scan: bool = False,
) -> Verification:
    """Apply the finding's remedy and re-run its check and the cheap checks it explains.

    The remedy is the config patch (embedded trainer) or the setup patch applied to a copy of the
    user's setup (`setup`). Verified when none of them finds anything at warning or above after
    the change. `options` are the per-check settings of the original diagnosis, `full_scan` its
    reading of every input.
    """
    try:
        if finding.config_patch and config is not None:
            patched: Config | TrainingSetup = patched_config(config, finding.config_patch)
        else:
            patched = finding.setup_patch(setup)
        ctx = DiagnosisContext(patched, full_scan=full_scan)
        ctx.options = dict(options or {})
        names = (finding.check, *finding.explains)
        checks = [c for c in ALL_CHECKS if c.name in names]
        checks = [c for c in checks if c.name == finding.check or c.phase in CHEAP_PHASES]
        statuses: dict[str, str] = {}
        remaining: list[str] = []
        for check in checks:
            run, found = run_check(check, ctx)
            statuses[check.name] = run.status
            remaining += [f.title for f in found if f.severity >= Severity.WARNING]
    except QuadDoctorError as exc:
        return Verification(False, {}, message=f"the patch cannot be applied: {exc}")
    except Exception as exc:  # the user's code, rebuilt with the change, may fail
        return Verification(False, {}, message=f"the change could not be tried: {exc}")
    ok = not remaining and all(status in ("pass", "skipped") for status in statuses.values())
    return Verification(ok, statuses, tuple(remaining))


def diagnose(
    source: Config | TrainingSetup,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    ctx: DiagnosisContext | None = None,
    on_check: ProgressHook | None = None,
    verify_remedies: bool = True,
    full_scan: bool = False,
) -> Report:
    """Run the selected checks against a setup (the user's, or the embedded trainer's built from a
    config) and rank the findings.

    Bad input (a broken config or dataset) propagates as a `QuadDoctorError`; any other exception
    inside a check becomes that check's `error` status while the others still run. Findings at
    warning or above with a config patch or a setup patch get it verified on a patched copy.
    Checks that read inputs read a sample bounded by work, unless `full_scan` (or the given
    context's `full_scan`) asks for every input.
    """
    started = time.perf_counter()
    selected = select_checks(only, skip)
    ctx = ctx or DiagnosisContext(source)
    ctx.full_scan = ctx.full_scan or full_scan
    config = ctx.config
    findings: list[Finding] = []
    runs: list[CheckRun] = []
    for index, check in enumerate(selected):
        if on_check:
            on_check(check.name, index, len(selected))
        run, found = run_check(check, ctx)
        runs.append(run)
        findings.extend(found)
    if verify_remedies:
        if on_check:
            on_check("verifying remedies", len(selected), len(selected))
        findings = [
            dataclasses.replace(
                f, verification=verify(f, config, ctx.options, ctx.setup, ctx.full_scan)
            )
            if (f.config_patch and config is not None or f.setup_patch)
            and f.severity >= Severity.WARNING
            else f
            for f in findings
        ]
    order = {check.name: check.order for check in ALL_CHECKS}
    return Report(
        findings=rank_findings(findings, order),
        checks=tuple(runs),
        context=describe(ctx),
        duration_s=time.perf_counter() - started,
        lr_range_test=ctx.published.get("lr_range_test"),
        measurements={k: v for k, v in ctx.published.items() if k != "lr_range_test"},
    )


def lr_range_report(report: Report) -> Report:
    """The part of `report` about the LR range test: its findings with the causes they nest under.

    Root causes whose group holds no lr-range-test finding are left out, and ranks renumbered.
    """
    kept = [
        ranked
        for ranked in report.findings
        if "lr-range-test" in (ranked.finding.check, *(f.check for f in ranked.explained))
    ]
    return dataclasses.replace(
        report,
        findings=tuple(dataclasses.replace(r, rank=i) for i, r in enumerate(kept, start=1)),
    )


def environment(device: object) -> dict[str, str]:
    """Versions and device, for the report's reader to reproduce the run."""
    try:
        version = importlib.metadata.version("quad-doctor")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "quad-doctor": version,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }


def describe(ctx: DiagnosisContext) -> dict[str, object]:
    """What was diagnosed, for the report's header: config, dataset and device (the embedded
    trainer), or the user's setup's pieces."""
    if ctx.config is not None:
        dataset = ctx.train_dataset.quad
        return describe_run(ctx.config, dataset.directory, dataset.manifest, ctx.device)
    return {**ctx.describe(), "device": str(ctx.device), "environment": environment(ctx.device)}


def describe_run(
    config: Config, dataset_dir: Path, manifest: Manifest, device: torch.device
) -> dict[str, object]:
    """A report's header, for a diagnosis or a training run: config, dataset, environment."""
    return {
        "config": config.to_dict(),
        "dataset": str(dataset_dir),
        "embedded_default": not config.data.path,
        "num_samples": len(manifest.labels),
        "classes": list(manifest.class_names),
        "device": str(device),
        "environment": environment(device),
    }
