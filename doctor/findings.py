"""Findings and reports: frozen data that every renderer reads and none computes."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

REPORT_SCHEMA = "quad-doctor/report/v1"


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

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-able data; `verified` is null when there was no patch to try."""
        data = asdict(self)
        data["severity"] = str(self.severity)
        data["explains"] = list(self.explains)
        data["verified"] = self.verification.verified if self.verification else None
        data["verification"] = self.verification.to_dict() if self.verification else None
        return data


@dataclass(frozen=True)
class CheckRun:
    """How one check ran: `pass` (no finding at warning or above), `fail`, `error` or `skipped`."""

    name: str
    status: str
    duration_s: float
    message: str = ""


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


@dataclass(frozen=True)
class Report:
    """The whole diagnosis: ranked root causes, how each check ran, and what was diagnosed."""

    findings: tuple[RankedFinding, ...]
    checks: tuple[CheckRun, ...]
    context: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    lr_range_test: dict[str, Any] | None = None  # the LR range test's curve and verdict, if run

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
        }


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
