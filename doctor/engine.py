"""The engine: run the selected checks in causal order, time each, rank what they find."""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence

from quad_doctor.checks import ALL_CHECKS, Check
from quad_doctor.context import DiagnosisContext
from quad_doctor.findings import CheckRun, Finding, Report, Severity, rank_findings
from quad_doctor.trainer.config import Config
from quad_doctor.trainer.errors import QuadDoctorError, UsageError


def check_names() -> list[str]:
    """Every check's name, in causal order."""
    return [check.name for check in ALL_CHECKS]


def select_checks(only: Sequence[str] = (), skip: Sequence[str] = ()) -> tuple[type[Check], ...]:
    """The checks `--only`/`--skip` leave, in causal order; unknown names are usage errors."""
    names = check_names()
    for option, given in (("--only", only), ("--skip", skip)):
        for name in given:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise UsageError(f"{option}: unknown check '{name}'{hint}")
    return tuple(
        check for check in ALL_CHECKS if (not only or check.name in only) and check.name not in skip
    )


def diagnose(config: Config, only: Sequence[str] = (), skip: Sequence[str] = ()) -> Report:
    """Run the selected checks against the trainer built from `config` and rank the findings.

    Bad input (a broken config or dataset) propagates as a `QuadDoctorError`; any other exception
    inside a check becomes that check's `error` status while the others still run.
    """
    selected = select_checks(only, skip)
    ctx = DiagnosisContext(config)
    findings: list[Finding] = []
    runs: list[CheckRun] = []
    for check in selected:
        started = time.perf_counter()
        try:
            found = list(check().run(ctx))
        except QuadDoctorError:
            raise
        except Exception as exc:  # a crashing check must not hide the others' findings
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            runs.append(CheckRun(check.name, "error", time.perf_counter() - started, message))
            continue
        failed = any(f.severity >= Severity.WARNING for f in found)
        status = "fail" if failed else "pass"
        runs.append(CheckRun(check.name, status, time.perf_counter() - started))
        findings.extend(found)
    order = {check.name: check.order for check in ALL_CHECKS}
    return Report(
        findings=rank_findings(findings, order),
        checks=tuple(runs),
        context={"config": config.to_dict(), "dataset": str(ctx.dataset_dir)},
    )
