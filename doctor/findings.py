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
class Finding:
    """One diagnosis: what is wrong, the numbers that show it, and what to change."""

    check: str
    severity: Severity
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    remedy: str = ""
    config_patch: dict[str, Any] = field(default_factory=dict)
    explains: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-able data."""
        data = asdict(self)
        data["severity"] = str(self.severity)
        data["explains"] = list(self.explains)
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
        }


def rank_findings(findings: list[Finding], order: dict[str, int]) -> tuple[RankedFinding, ...]:
    """Severity first, then causal order; a finding another one explains is nested under it.

    An upstream fault explains downstream symptoms, so a finding named in another's `explains`
    is shown under that cause instead of as a root cause of its own.
    """

    def key(finding: Finding) -> tuple[int, int]:
        return (-int(finding.severity), order.get(finding.check, len(order)))

    ordered = sorted(findings, key=key)
    explained_by: dict[int, int] = {}
    for i, cause in enumerate(ordered):
        for j, effect in enumerate(ordered):
            if i != j and j not in explained_by and effect.check in cause.explains:
                if i not in explained_by:  # a cause that is itself explained passes nothing on
                    explained_by[j] = i
    roots = [i for i in range(len(ordered)) if i not in explained_by]
    return tuple(
        RankedFinding(
            rank=rank,
            finding=ordered[i],
            explained=tuple(ordered[j] for j, cause in explained_by.items() if cause == i),
        )
        for rank, i in enumerate(roots, start=1)
    )
