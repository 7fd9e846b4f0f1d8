"""Findings and reports: frozen data that every renderer reads and none computes."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quad_doctor.trainer.errors import UsageError

REPORT_SCHEMA = "quad-doctor/report/v1"
# The fields of a training record (the live doctor's) that renderers read, and their types
TRAINING_REQUIRED = {
    "run_dir": str,
    "status": str,
    "epoch": int,
    "num_epochs": (int, type(None)),  # None: a loop that did not say
    "global_step": int,
}
TRAINING_OPTIONAL = {
    "stop_reason": (str, type(None)),
    "collapse_value": float,
    "batch_size": int,
    "metrics": list,
    "steps": dict,
    "events": list,
    "doctor": dict,
}


class Severity(enum.IntEnum):
    """How bad a finding is; larger is worse, so `max()` gives the worst."""

    INFO = 0
    WARNING = 1
    ERROR = 2
    CRITICAL = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Severity:
        """The severity called `name` (critical, error, warning, info)."""
        return cls[name.upper()]


SEVERITIES = tuple(str(severity) for severity in sorted(Severity, reverse=True))


def significant(value: float | None, digits: int = 3) -> float | None:
    """`value` rounded to `digits` significant digits, as evidence and patches carry numbers."""
    return None if value is None else float(f"{value:.{digits}g}")


@dataclass(frozen=True)
class Verification:
    """What the engine saw when it re-ran a finding's check on the config with its patch applied."""

    verified: bool
    statuses: dict[str, str]  # check name -> status on the patched config
    remaining: tuple[str, ...] = ()  # titles of findings (warning or worse) that did not go away
    message: str = ""  # why the patch could not be tried, when it could not

    def to_dict(self) -> dict[str, Any]:
        """The verification as JSON-able data."""
        return {
            "verified": self.verified,
            "statuses": dict(self.statuses),
            "remaining": list(self.remaining),
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "verification") -> Verification:
        """The verification `to_dict` wrote; a UsageError naming `where` when it is malformed."""
        _fields(
            data, where, {"verified": bool, "statuses": dict}, {"remaining": list, "message": str}
        )
        return cls(
            data["verified"],
            data["statuses"],
            tuple(data.get("remaining", ())),
            data.get("message", ""),
        )


@dataclass(frozen=True)
class Finding:
    """One diagnosis: what is wrong, the numbers that show it, and what to change."""

    check: str
    severity: Severity
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    remedy: str = ""
    config_patch: dict[str, Any] = field(default_factory=dict)
    explains: tuple[str, ...] = ()
    verification: Verification | None = None  # set by the engine for findings with a patch
    # For a user's own code: the change to make, as code, and how to apply it to a copy of the
    # setup (setup -> patched setup) so the engine can verify it; None when it cannot be applied
    # automatically. Not serialised: a function is no JSON.
    code_change: str = ""
    setup_patch: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-able data; `verified` is null when there was no patch to try."""
        data = asdict(self)
        data.pop("setup_patch")
        data["severity"] = str(self.severity)
        data["explains"] = list(self.explains)
        data["verified"] = self.verification.verified if self.verification else None
        data["verification"] = self.verification.to_dict() if self.verification else None
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "finding") -> Finding:
        """The finding `to_dict` wrote; a UsageError naming `where` when it is malformed."""
        required = {"check": str, "severity": str, "title": str}
        optional = {"evidence": dict, "remedy": str, "config_patch": dict, "explains": list}
        optional |= {"code_change": str}
        _fields(data, where, required, optional)
        if data["severity"] not in SEVERITIES:
            raise UsageError(
                f"{where}.severity: unknown {data['severity']!r} (one of {', '.join(SEVERITIES)})"
            )
        verification = data.get("verification")
        if verification is not None:
            verification = Verification.from_dict(verification, f"{where}.verification")
        return cls(
            data["check"],
            Severity.parse(data["severity"]),
            data["title"],
            data.get("evidence", {}),
            data.get("remedy", ""),
            data.get("config_patch", {}),
            tuple(data.get("explains", ())),
            verification,
            data.get("code_change", ""),
        )


@dataclass(frozen=True)
class CheckRun:
    """How one check ran: `pass` (no finding at warning or above), `fail`, `error` or `skipped`."""

    name: str
    status: str
    duration_s: float
    message: str = ""

    @classmethod
    def from_dict(cls, data: Any, where: str = "check") -> CheckRun:
        """The check run the report wrote; a UsageError naming `where` when it is malformed."""
        _fields(data, where, {"name": str, "status": str, "duration_s": float}, {"message": str})
        return cls(data["name"], data["status"], data["duration_s"], data.get("message", ""))


@dataclass(frozen=True)
class RankedFinding:
    """A finding with its rank, and the findings it explains nested under it."""

    rank: int
    finding: Finding
    explained: tuple[Finding, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The ranked finding as JSON-able data."""
        return {
            "rank": self.rank,
            **self.finding.to_dict(),
            "explained": [f.to_dict() for f in self.explained],
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "finding") -> RankedFinding:
        """The ranked finding `to_dict` wrote; a UsageError naming `where` when it is malformed."""
        _fields(data, where, {"rank": int}, {"explained": list})
        explained = enumerate(data.get("explained", ()))
        return cls(
            data["rank"],
            Finding.from_dict(data, where),
            tuple(Finding.from_dict(f, f"{where}.explained[{i}]") for i, f in explained),
        )


@dataclass(frozen=True)
class Report:
    """The whole diagnosis: ranked root causes, how each check ran, and what was diagnosed."""

    findings: tuple[RankedFinding, ...]
    checks: tuple[CheckRun, ...]
    context: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    lr_range_test: dict[str, Any] | None = None  # the LR range test's curve and verdict, if run
    # A training run's record from the live doctor (status, per-step series, metrics, events)
    training: dict[str, Any] | None = None
    # What checks measured for the pictures: class counts per split, the sampler's batches,
    # gradient norms per module (by name, each a JSON-able dict)
    measurements: dict[str, Any] = field(default_factory=dict)

    def passed(self, fail_on: str = "error") -> bool:
        """True when no finding is at or above `fail_on` (critical, error, warning; `never`
        always passes) and no check crashed."""
        if fail_on == "never":
            return True
        if fail_on not in SEVERITIES[:-1]:
            raise UsageError(
                f"fail_on: expected critical, error, warning or never, got {fail_on!r}"
            )
        if any(run.status == "error" for run in self.checks):
            return False
        return self.worst is None or self.worst < Severity.parse(fail_on)

    def save_json(self, path: str | Path) -> Path:
        """Write the report as JSON (schema v1) to `path`, atomically; returns the path."""
        from quad_doctor.reports import json as json_report

        json_report.render(self, Path(path))
        return Path(path)

    def save_html(self, path: str | Path) -> Path:
        """Write the report as one self-contained HTML page to `path`; returns the path."""
        from quad_doctor.reports import html as html_report

        html_report.render(self, Path(path))
        return Path(path)

    def _repr_html_(self) -> str:
        """The HTML page, for a notebook to display."""
        from quad_doctor.reports import html as html_report

        return html_report.render(self)

    def count(self, severity: Severity) -> int:
        """How many findings, explained ones included, have exactly this severity."""
        every = [r.finding for r in self.findings] + [f for r in self.findings for f in r.explained]
        return sum(f.severity is severity for f in every)

    @property
    def worst(self) -> Severity | None:
        """The worst severity among all findings, explained ones included; None when clean."""
        severities = [r.finding.severity for r in self.findings]
        severities += [f.severity for r in self.findings for f in r.explained]
        return max(severities) if severities else None

    def to_dict(self) -> dict[str, Any]:
        """The report in the JSON contract of DESIGN.md (schema v1)."""
        return {
            "schema": REPORT_SCHEMA,
            "findings": [r.to_dict() for r in self.findings],
            "checks": [asdict(c) for c in self.checks],
            "context": self.context,
            "duration_s": round(self.duration_s, 3),
            "lr_range_test": self.lr_range_test,
            "training": self.training,
            "measurements": self.measurements,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """The report `to_dict` wrote (schema v1); a one-line UsageError when it is not one."""
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema != REPORT_SCHEMA:
            found = "no schema" if schema is None else f"schema {schema!r}"
            raise UsageError(f"not a quad-doctor report ({found}, expected {REPORT_SCHEMA!r})")
        dict_or_null = (dict, type(None))
        optional = {"context": dict, "duration_s": float}
        optional |= {"lr_range_test": dict_or_null, "training": dict_or_null}
        optional |= {"measurements": dict}
        _fields(data, "report", {"findings": list, "checks": list}, optional)
        if data.get("training") is not None:
            _fields(data["training"], "training", TRAINING_REQUIRED, TRAINING_OPTIONAL)
        findings = enumerate(data["findings"])
        checks = enumerate(data["checks"])
        return cls(
            tuple(RankedFinding.from_dict(f, f"findings[{i}]") for i, f in findings),
            tuple(CheckRun.from_dict(c, f"checks[{i}]") for i, c in checks),
            data.get("context", {}),
            data.get("duration_s", 0.0),
            data.get("lr_range_test"),
            data.get("training"),
            data.get("measurements", {}),
        )


def _fields(
    data: Any,
    where: str,
    required: dict[str, type | tuple[type, ...]],
    optional: dict[str, type | tuple[type, ...]],
) -> None:
    """Raise a UsageError naming `where` unless `data` is an object holding every required key,
    and every key it holds, required or optional, has its type."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected an object, got {_kind(type(data))}")
    missing = [key for key in required if key not in data]
    if missing:
        raise UsageError(f"{where}: missing {missing[0]!r}")
    for key, expected in (required | optional).items():
        if key in data and not _fits(data[key], expected):
            got = _kind(type(data[key]))
            raise UsageError(f"{where}.{key}: expected {_kind(expected)}, got {got}")


def _fits(value: Any, expected: type | tuple[type, ...]) -> bool:
    """Whether a JSON value has the type: a float field takes integers too, and only a bool field
    takes `true` (to Python a bool is an int)."""
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (isinstance(value, int) and float in kinds)


JSON_KINDS = {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer"}
JSON_KINDS |= {float: "number", type(None): "null"}


def _kind(expected: type | tuple[type, ...]) -> str:
    """`object`, `number`, `object or null`: a type, or types, in JSON's words."""
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(JSON_KINDS.get(kind, kind.__name__) for kind in kinds)


def rank_findings(findings: list[Finding], order: dict[str, int]) -> tuple[RankedFinding, ...]:
    """Root causes ranked by severity, then causal order; what each explains is nested under it.

    An upstream fault explains downstream symptoms: a finding named in the `explains` of a finding
    from an earlier check is not a root cause of its own, and is shown under the root its chain of
    causes leads to. A root ranks by the worst severity among itself and what it explains, so the
    cause of a critical symptom is never ranked below an unrelated warning.
    """

    def position(finding: Finding) -> int:
        return order.get(finding.check, len(order))

    causes: dict[int, int] = {}
    for j, effect in enumerate(findings):
        upstream = [
            i
            for i, cause in enumerate(findings)
            if effect.check in cause.explains and position(cause) < position(effect)
        ]
        if upstream:
            causes[j] = min(upstream, key=lambda i: position(findings[i]))

    def root_of(j: int) -> int:
        while j in causes:
            j = causes[j]
        return j

    nested: dict[int, list[int]] = {}
    for j in causes:
        nested.setdefault(root_of(j), []).append(j)

    def key(i: int) -> tuple[int, int]:
        members = [findings[k] for k in (i, *nested.get(i, []))]
        return (-max(int(f.severity) for f in members), position(findings[i]))

    roots = sorted((i for i in range(len(findings)) if i not in causes), key=key)
    return tuple(
        RankedFinding(
            rank=rank,
            finding=findings[i],
            explained=tuple(
                sorted(
                    (findings[j] for j in nested.get(i, [])),
                    key=lambda f: (-int(f.severity), position(f)),
                )
            ),
        )
        for rank, i in enumerate(roots, start=1)
    )
