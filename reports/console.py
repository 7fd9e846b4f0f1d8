"""The rich console report: header, ranked findings with evidence and patch, one summary line."""

from __future__ import annotations

from typing import Any

import tomli_w
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from quad_doctor.findings import Finding, RankedFinding, Report, Severity

SEVERITY_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.ERROR: "bold red",
    Severity.WARNING: "bold yellow",
    Severity.INFO: "cyan",
}
STATUS_STYLE = {"pass": "green", "fail": "red", "error": "bold magenta", "skipped": "dim"}
# Evidence lists longer than this (per-step curves, per-class tables) stay in the JSON report.
MAX_LIST_ITEMS = 6
MAX_DICT_ITEMS = 8


def render(report: Report, console: Console, title: str = "quad-doctor diagnose") -> None:
    """Print the report: what was diagnosed, the ranked root causes, the checks, a summary."""
    console.print(_header(report, title))
    if not report.findings:
        console.print(Text("No problems found.", style="bold green"))
    for ranked in report.findings:
        console.print(_ranked(ranked))
    console.print(_checks(report))
    console.print(summary_line(report))


def summary_line(report: Report) -> Text:
    """`1 critical, 0 errors, 2 warnings · 8 checks in 6.3 s` (plus crashed checks, if any)."""
    critical = report.count(Severity.CRITICAL)
    errors = report.count(Severity.ERROR)
    warnings = report.count(Severity.WARNING)
    text = Text()
    text.append(f"{critical} critical", style=SEVERITY_STYLE[Severity.CRITICAL] if critical else "")
    text.append(", ")
    text.append(_plural(errors, "error"), style=SEVERITY_STYLE[Severity.ERROR] if errors else "")
    text.append(", ")
    text.append(
        _plural(warnings, "warning"), style=SEVERITY_STYLE[Severity.WARNING] if warnings else ""
    )
    ran = [run for run in report.checks if run.status != "skipped"]
    text.append(f" · {_plural(len(ran), 'check')} in {report.duration_s:.1f} s")
    crashed = sum(run.status == "error" for run in report.checks)
    if crashed:
        text.append(f" · {crashed} crashed", style=STATUS_STYLE["error"])
    return text


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _header(report: Report, title: str) -> RenderableType:
    context = report.context
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    table.add_row("config", str(context.get("config_source", "embedded default")))
    if "dataset" in context:
        dataset = context["dataset"]
        if context.get("embedded_default"):
            dataset = f"embedded synthetic default ({dataset})"
        count = context.get("num_samples")
        classes = context.get("classes", [])
        table.add_row("dataset", f"{dataset} · {count} samples, {len(classes)} classes")
    if "device" in context:
        table.add_row("device", str(context["device"]))
    return Group(Text(title, style="bold"), table, Text())


def _ranked(ranked: RankedFinding) -> RenderableType:
    finding = ranked.finding
    parts: list[RenderableType] = [_headline(f"{ranked.rank:>2} ", finding)]
    body = Table.grid(padding=(0, 2))
    body.add_column(style="dim", no_wrap=True)
    body.add_column()
    evidence = _evidence(finding.evidence)
    if evidence:
        body.add_row("evidence", evidence)
    if finding.remedy:
        body.add_row("remedy", finding.remedy)
    if finding.config_patch:
        body.add_row("patch", Text(patch_toml(finding.config_patch), style="green"))
    if finding.verification is not None:
        body.add_row("", _verification(finding))
    parts.append(Padding(body, (0, 0, 0, 4)))
    if ranked.explained:
        explained: list[RenderableType] = [Text("explains:", style="dim")]
        explained += [_headline("", effect) for effect in ranked.explained]
        parts.append(Padding(Group(*explained), (0, 0, 0, 4)))
    parts.append(Text())
    return Group(*parts)


def _headline(prefix: str, finding: Finding) -> Table:
    """Rank, severity badge, check name, and the title wrapping under itself."""
    line = Table.grid(padding=(0, 1))
    line.add_column(no_wrap=True)
    line.add_column(ratio=1)
    badge = Text(f" {str(finding.severity).upper()} ", style=SEVERITY_STYLE[finding.severity])
    title = Text(finding.check, style="bold")
    title.append(f"  {finding.title}", style="default")
    line.add_row(Text(prefix) + badge, title)
    return line


def _verification(finding: Finding) -> Text:
    check = finding.verification
    assert check is not None
    if check.verified:
        names = list(check.statuses)
        listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        verb = "pass" if len(names) > 1 else "passes"
        return Text(f"fix verified: with the patch applied, {listed} {verb}", style="bold green")
    if check.message:
        return Text(f"fix not verified: {check.message}", style="yellow")
    still = "; ".join(check.remaining) or "a check still fails"
    return Text(f"fix not verified: with the patch applied, {still}", style="yellow")


def patch_toml(patch: dict[str, Any]) -> str:
    """The patch as TOML lines with dotted keys, e.g. `train.sampler = "stratified"`."""
    lines = []
    for key, value in patch.items():
        rendered = tomli_w.dumps({"_": value}).strip()
        lines.append(f"{key}{rendered[1:]}")
    return "\n".join(lines)


def _evidence(evidence: dict[str, Any]) -> RenderableType | None:
    lines: list[Text] = []
    scalars: list[str] = []
    for key, value in evidence.items():
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            lines.extend(Text(v) for v in value[:MAX_LIST_ITEMS])
        elif isinstance(value, list) and len(value) <= MAX_LIST_ITEMS and _flat(value):
            scalars.append(f"{key} {_format(value)}")
        elif isinstance(value, dict) and len(value) <= MAX_DICT_ITEMS and _flat(value.values()):
            inner = ", ".join(f"{k}={_format(v)}" for k, v in value.items())
            scalars.append(f"{key} {{{inner}}}")
        elif not isinstance(value, (list, dict)):
            scalars.append(f"{key} {_format(value)}")
    if scalars:
        lines.append(Text(" · ".join(scalars), style="dim"))
    return Group(*lines) if lines else None


def _flat(values) -> bool:
    return all(not isinstance(v, (list, dict)) for v in values)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    return str(value)


def _checks(report: Report) -> RenderableType:
    table = Table(box=None, show_header=True, header_style="dim", padding=(0, 2))
    table.add_column("check")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("")
    for run in report.checks:
        table.add_row(
            run.name,
            Text(run.status, style=STATUS_STYLE.get(run.status, "")),
            f"{run.duration_s:.2f} s",
            run.message,
        )
    return Group(table, Text())
