"""The rich console report: header, ranked findings with evidence and patch, one summary line."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import tomli_w
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from quad_doctor.findings import SEVERITIES, Finding, RankedFinding, Report, Severity

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
    """Print the report: what was diagnosed, how training went (if it ran), the ranked root causes,
    the checks, a summary."""
    console.print(_header(report, title))
    if report.training is not None:
        console.print(training_block(report.training))
    if not report.findings:
        console.print(Text("No problems found.", style="bold green"))
    for ranked in report.findings:
        console.print(ranked_block(ranked))
    if report.lr_range_test:
        console.print(lr_range_line(report.lr_range_test))
    if report.checks:
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
    if "setup" in context:  # the user's own code
        table.add_row("setup", str(context["setup"]))
        table.add_row(
            "model",
            f"{context.get('model')} ({context.get('parameters', 0):,} parameters) · loss "
            f"{context.get('loss')} · {context.get('optimizer')}"
            + (f" + {context['scheduler']}" if context.get("scheduler") else ""),
        )
        data = [
            str(context["dataset"]) if context.get("dataset") else "",
            f"{context['num_samples']} samples" if context.get("num_samples") else "",
            f"{len(context['classes'])} classes" if context.get("classes") else "",
            f"batch sampler {context['batch_sampler']}" if context.get("batch_sampler") else "",
        ]
        if any(data):  # a watched loop may not say
            table.add_row("data", " · ".join(part for part in data if part))
    else:
        table.add_row("config", str(context.get("config_source", "embedded default")))
    if "dataset" in context and "setup" not in context:
        dataset = context["dataset"]
        if context.get("embedded_default"):
            dataset = f"embedded synthetic default ({dataset})"
        count = context.get("num_samples")
        classes = context.get("classes", [])
        table.add_row("dataset", f"{dataset} · {count} samples, {len(classes)} classes")
    if "device" in context:
        table.add_row("device", str(context["device"]))
    return Group(Text(title, style="bold"), table, Text())


def ranked_block(ranked: RankedFinding) -> RenderableType:
    """One root cause: headline, evidence, remedy, patch, verification, what it explains."""
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
    if finding.code_change:
        body.add_row("change", Text(finding.code_change, style="green"))
    if finding.verification is not None:
        body.add_row("", _verification(finding))
    elif finding.code_change:
        body.add_row(
            "", Text("not verified: this change cannot be applied automatically", style="dim")
        )
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
        what = "the patch applied" if finding.config_patch else "the change applied to a copy"
        return Text(f"fix verified: with {what}, {listed} {verb}", style="bold green")
    if check.message:
        return Text(f"fix not verified: {check.message}", style="yellow")
    still = "; ".join(check.remaining) or "a check still fails"
    return Text(f"fix not verified: with the change applied, {still}", style="yellow")


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


# -- the LR range test -------------------------------------------------------------------------

VERDICT_STYLE = {
    "ok": "bold green",
    "too-high": "bold red",
    "too-low": "bold yellow",
    "not-lr": "bold magenta",
}


def lr_range_line(test: dict[str, Any]) -> Text:
    """`LR range test  suggested 6.5e-04, warm-up from 6.5e-06 · learning_rate 1e-04: ok · …`."""
    text = Text("LR range test  ", style="bold")
    if test.get("suggested_lr"):
        text.append(f"suggested {test['suggested_lr']:.2g}", style="bold")
        text.append(f", warm-up from {test['warmup_start_lr']:.2g}")
    else:
        text.append("no suggestion: the learning rate is not the cause")
    text.append(f" · learning_rate {test['configured_lr']:.2g}: ")
    text.append(test["verdict"], style=VERDICT_STYLE.get(test["verdict"], ""))
    reliability = test.get("reliability") or {}
    if reliability.get("level") not in (None, "none"):
        text.append(f" · reliability {reliability['level']}")
        if reliability.get("snr") is not None:
            text.append(f" (valley {reliability['snr']:.0f}× the loss noise)")
        if reliability.get("spread_decades") is not None:
            text.append(f", {len(reliability['repeats'])} sweeps agree within ")
            text.append(f"{reliability['spread_decades']:.2f} decades")
    text.append(
        f" · {test['iterations']} steps ({test['stop_reason']}), {test['duration_s']:.1f} s",
        style="dim",
    )
    return Text.assemble(text, "\n")


def lr_range_curve(test: dict[str, Any], width: int = 64, height: int = 12) -> Text:
    """The held-out loss against log LR as a text plot: `•` the curve, `─` ln(B-1), and the
    columns of the suggestion (`S`) and of the configured LR (`C`, an arrow when outside)."""
    lrs, losses = test["lr"], test["loss"]
    if len(lrs) < 2:
        return Text("(too few points to plot)", style="dim")
    left, right = math.log10(lrs[0]), math.log10(lrs[-1])
    columns: list[list[float]] = [[] for _ in range(width)]
    for lr, loss in zip(lrs, losses, strict=True):
        columns[_column(lr, left, right, width)].append(loss)
    collapse = test.get("collapse_value")
    low = min(losses)
    # a divergence spike must not squash the valley: cap the top a little above the start
    high = min(max(losses), losses[0] + 0.25 * max(losses[0] - low, 0.2))
    high = max(high, collapse or high)
    if high - low < 1e-6:
        high = low + 0.01

    def row_of(value: float) -> int:
        clipped = min(max(value, low), high)
        return round((high - clipped) / (high - low) * (height - 1))

    grid = [[" "] * width for _ in range(height)]
    styles = [[""] * width for _ in range(height)]
    if collapse is not None:
        for x in range(width):
            grid[row_of(collapse)][x], styles[row_of(collapse)][x] = "─", "dim"
    configured = test.get("configured_lr")
    marks = [
        ("S", test.get("suggested_lr"), "bold green"),
        ("C", configured, VERDICT_STYLE.get(test["verdict"], "bold")),
    ]
    header = Text(" " * 8)
    header_cells = [" "] * width
    header_styles = [""] * width
    for mark, lr, style in marks:
        if not lr:
            continue
        x = 0 if lr < lrs[0] else width - 1 if lr > lrs[-1] else _column(lr, left, right, width)
        if lrs[0] <= lr <= lrs[-1]:
            for y in range(height):
                grid[y][x], styles[y][x] = "│", style
        cells = {x: mark}
        if lr < lrs[0]:
            cells = {0: "◀", 1: mark}
        elif lr > lrs[-1]:
            cells = {width - 2: mark, width - 1: "▶"}
        for at, cell in cells.items():
            header_cells[at], header_styles[at] = cell, style
    for cell, style in zip(header_cells, header_styles, strict=True):
        header.append(cell, style=style)
    for x, values in enumerate(columns):
        if values:
            y = row_of(sum(values) / len(values))
            grid[y][x], styles[y][x] = "•", "bold blue"
    text = Text.assemble(header, "\n")
    labelled = {0: high, height - 1: low}
    if collapse is not None:
        labelled[row_of(collapse)] = collapse
    for y in range(height):
        text.append(f"{labelled[y]:7.4f} " if y in labelled else " " * 8, style="dim")
        for x in range(width):
            text.append(grid[y][x], style=styles[y][x])
        text.append("\n")
    axis = f"{lrs[0]:<10.2g}{'learning rate (log scale)':^{width - 20}}{lrs[-1]:>10.2g}"
    text.append(" " * 8 + axis + "\n", style="dim")
    legend = Text(" " * 8 + "• held-out loss  ─ ln(B-1)")
    if test.get("suggested_lr"):
        legend.append(f"  S suggested {test['suggested_lr']:.2g}", style="green")
    if configured:
        legend.append(
            f"  C configured {configured:.2g}", style=VERDICT_STYLE.get(test["verdict"], "")
        )
        if not lrs[0] <= configured <= lrs[-1]:
            legend.append(f" ({'below' if configured < lrs[0] else 'above'} the sweep)")
    return text + legend


def _column(lr: float, left: float, right: float, width: int) -> int:
    return min(width - 1, max(0, round((math.log10(lr) - left) / (right - left) * (width - 1))))


def lr_range_table(test: dict[str, Any]) -> Table:
    """Suggestion, warm-up start, verdict, valley and reliability as a two-column table."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    suggested = test.get("suggested_lr")
    table.add_row("suggested_lr", f"{suggested:.2g}" if suggested else "none (not the LR)")
    warmup = test.get("warmup_start_lr")
    table.add_row("warmup_start_lr", f"{warmup:.2g}" if warmup else "-")
    table.add_row(
        "verdict",
        Text.assemble(
            (test["verdict"], VERDICT_STYLE.get(test["verdict"], "")),
            f" for learning_rate {test['configured_lr']:.2g}",
        ),
    )
    valley = test.get("valley")
    if valley:
        end = f"{valley['end_lr']:.2g}" if valley.get("end_lr") else "past the sweep"
        table.add_row(
            "valley",
            f"falls from {valley['onset_lr']:.2g}, lowest at {valley['bottom_lr']:.2g}, "
            f"climbs back by {end}",
        )
    table.add_row(
        "held-out loss",
        f"{test['loss'][0]:.4f} untrained → {test['min_loss']:.4f} lowest; "
        f"ln(B-1) = {test['collapse_value']:.4f}"
        if test["loss"]
        else "no finite value",
    )
    reliability = test.get("reliability") or {}
    detail = f"{reliability.get('level')}"
    if reliability.get("snr") is not None:
        detail += (
            f": valley depth {reliability['depth']:.3f} = {reliability['snr']:.1f}× the "
            f"training loss noise {reliability['noise']:.3f}"
        )
    if reliability.get("spread_decades") is not None:
        detail += f"; {len(reliability['repeats'])} sweeps within "
        detail += f"{reliability['spread_decades']:.2f} decades"
    table.add_row("reliability", detail)
    table.add_row(
        "sweep",
        f"{test['iterations']} steps over {test['lr'][0]:.2g} … {test['lr'][-1]:.2g}, "
        f"stopped: {test['stop_reason']}, {test['duration_s']:.1f} s"
        if test["lr"]
        else f"stopped at once: {test['stop_reason']}",
    )
    return table


# -- a training run ----------------------------------------------------------------------------

TRAINING_STATUS_STYLE = {
    "running": "bold cyan",
    "finished": "bold green",
    "stopped": "bold red",
    "interrupted": "bold yellow",
}
# Epoch rows shown: the first, the last and evenly spaced ones between; all are in metrics.jsonl.
MAX_METRIC_ROWS = 12
MAX_EVENTS = 5
# A final loss this close to ln(B-1) is pinned there: the 3.4335 of the original failure's run.
PINNED_TOLERANCE = 0.005


def training_block(training: dict[str, Any]) -> RenderableType:
    """How a training run went: status, per-epoch metrics, final loss against ln(B-1), the live
    doctor's events and its overhead."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    table.add_row("training", _training_status(training))
    if training.get("metrics"):
        table.add_row("metrics", _metrics_table(training["metrics"]))
    loss = _final_loss(training)
    if loss is not None and "collapse_value" in training:
        table.add_row("final loss", _against_collapse(loss, training))
    table.add_row("events", _events(training.get("events") or []))
    doctor = training.get("doctor") or {}
    if doctor.get("overhead_fraction") is not None:
        overhead = f"{doctor['overhead_fraction']:.1%} of step time ({doctor['time_s']:.2f} s)"
        table.add_row("doctor", overhead)
    return Group(table, Text())


def _training_status(training: dict[str, Any]) -> Text:
    """`stopped: <reason> · 3/30 epochs · step 111 · runs/x`."""
    status = training["status"]
    text = Text(status, style=TRAINING_STATUS_STYLE.get(status, "bold"))
    if training.get("stop_reason"):
        text.append(f": {training['stop_reason']}")
    planned = training["num_epochs"]
    text.append(
        f" · epoch {training['epoch']}"
        if planned is None
        else f" · {training['epoch']}/{planned} epochs"
    )
    text.append(f" · step {training['global_step']} · {training['run_dir']}", style="dim")
    return text


def _metrics_table(rows: list[dict[str, Any]]) -> RenderableType:
    """Epoch, train loss, val accuracy and LR; long runs show MAX_METRIC_ROWS spread evenly."""
    table = Table(box=None, header_style="dim", padding=(0, 2, 0, 0))
    for column in ("epoch", "train loss", "val accuracy", "lr"):
        table.add_column(column, justify="right")
    shown = _spread(len(rows), MAX_METRIC_ROWS)
    for index in shown:
        row = rows[index]
        table.add_row(
            str(row["epoch"]),
            _or_dash(row.get("train_loss"), ".4f"),
            _or_dash(row.get("val_accuracy"), ".3f"),
            _or_dash(row.get("lr"), ".2e"),
        )
    hidden = len(rows) - len(shown)
    if not hidden:
        return table
    return Group(table, Text(f"{hidden} more rows in metrics.jsonl", style="dim"))


def _spread(count: int, limit: int) -> list[int]:
    """At most `limit` indices into `count` items: the first, the last and evenly spaced ones."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def _or_dash(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _final_loss(training: dict[str, Any]) -> float | None:
    """The last epoch's mean training loss; the last step's loss while no epoch has finished."""
    epochs = [row["train_loss"] for row in training.get("metrics") or [] if row.get("train_loss")]
    steps = (training.get("steps") or {}).get("loss") or []
    return epochs[-1] if epochs else steps[-1] if steps else None


def _against_collapse(loss: float, training: dict[str, Any]) -> Text:
    """`1.5165, 1.9175 below ln(31) = 3.4340`, or `3.4335, pinned at ln(31) = 3.4340`."""
    collapse = training["collapse_value"]
    size = training.get("batch_size")
    bound = f"ln({size - 1}) = {collapse:.4f}" if size else f"{collapse:.4f}"
    if abs(loss - collapse) < PINNED_TOLERANCE:
        return Text(f"{loss:.4f}, pinned at {bound}", style="bold red")
    side = "below" if loss < collapse else "above"
    return Text(f"{loss:.4f}, {abs(loss - collapse):.4f} {side} {bound}")


def _events(events: list[dict[str, Any]]) -> RenderableType:
    """The events counted by severity, then the first MAX_EVENTS of them."""
    if not events:
        return Text("none", style="green")
    counts = Counter(event["severity"] for event in events)
    ordered = [name for name in SEVERITIES if name in counts]
    ordered += sorted(set(counts) - set(SEVERITIES))
    counted = ", ".join(_severity_count(counts[name], name) for name in ordered)
    lines: list[RenderableType] = [Text(counted)]
    listed = Table.grid(padding=(0, 1))
    listed.add_column(justify="right", style="dim", no_wrap=True)
    listed.add_column(no_wrap=True)
    listed.add_column()
    for event in events[:MAX_EVENTS]:
        severity = event["severity"]
        style = SEVERITY_STYLE[Severity.parse(severity)] if severity in SEVERITIES else ""
        message = Text(event["rule"], style="bold")
        message.append(f"  {event['message']}", style="default")
        listed.add_row(f"step {event['step']}", Text(f" {severity.upper()} ", style=style), message)
    lines.append(listed)
    if len(events) > MAX_EVENTS:
        lines.append(Text(f"and {len(events) - MAX_EVENTS} more in events.jsonl", style="dim"))
    return Group(*lines)


def _severity_count(count: int, severity: str) -> str:
    """`2 critical`, `3 warnings`, `1 info`: in the summary line's words."""
    return f"{count} {severity}" if severity in ("critical", "info") else _plural(count, severity)
