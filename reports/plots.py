"""Pictures of report data with matplotlib's object API (no pyplot state, no display needed).

Renderers draw what the report holds; they compute no diagnosis.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from quad_doctor.trainer.errors import UsageError
from quad_doctor.trainer.rundir import write_bytes_atomic

PLOT_FORMATS = ("svg", "png", "pdf")
VERDICT_COLOUR = {"ok": "#2a7d2a", "too-high": "#c0392b", "too-low": "#b9770e", "not-lr": "#7f8c8d"}


def plot_format(path: str | Path) -> str:
    """The format `path`'s suffix names; any other suffix is a usage error (exit 2)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise UsageError(f"--plot {path}: unknown image format; use .svg, .png or .pdf")
    return suffix


def lr_range_figure(test: dict[str, Any]) -> Figure:
    """The LR range test's curves with the valley, the suggestion and the configured LR marked."""
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    ax = figure.add_subplot()
    lrs, held = test["lr"], test["loss"]
    ax.plot(lrs, test["train_loss"], color="#b0b7bf", linewidth=0.8, label="training batch loss")
    ax.plot(lrs, test["smoothed"], color="#7f8c8d", linestyle="--", linewidth=1, label="smoothed")
    ax.plot(lrs, held, color="#1f4e9c", linewidth=2, label="held-out batch loss")
    collapse = test.get("collapse_value")
    if collapse is not None:
        ax.axhline(collapse, color="#555555", linestyle=":", linewidth=1)
        ax.annotate(
            f"ln(B-1) = {collapse:.4f}",
            (lrs[0] if lrs else 1e-6, collapse),
            textcoords="offset points",
            xytext=(2, -11),
            fontsize=8,
            color="#555555",
        )
    valley = test.get("valley") or {}
    if valley.get("onset_lr"):
        end = valley.get("end_lr") or (lrs[-1] if lrs else valley["onset_lr"])
        ax.axvspan(valley["onset_lr"], end, color="#2a7d2a", alpha=0.08, label="valley")
    suggested = test.get("suggested_lr")
    if suggested:
        ax.axvline(suggested, color="#2a7d2a", linewidth=2, label=f"suggested {suggested:.2g}")
        warmup = test.get("warmup_start_lr")
        if warmup:
            ax.axvline(warmup, color="#2a7d2a", linestyle=":", label=f"warm-up start {warmup:.2g}")
    _mark_configured(ax, test, lrs)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("SupCon loss")
    _clip_spikes(ax, test)
    verdict = test.get("verdict", "")
    ax.set_title(
        f"LR range test: verdict {verdict}"
        + (f", suggested learning rate {suggested:.2g}" if suggested else ", no suggestion")
    )
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return figure


def _mark_configured(ax: Any, test: dict[str, Any], lrs: list[float]) -> None:
    """The configured LR as a line, or an arrow at the edge when it lies outside the sweep."""
    configured = test.get("configured_lr")
    if not configured or not lrs:
        return
    colour = VERDICT_COLOUR.get(test.get("verdict", ""), "#c0392b")
    label = f"configured {configured:.2g} ({test.get('verdict')})"
    if lrs[0] <= configured <= lrs[-1]:
        ax.axvline(configured, color=colour, linestyle="-.", linewidth=1.5, label=label)
        return
    edge, arrow = (lrs[0], "← ") if configured < lrs[0] else (lrs[-1], "→ ")
    ax.annotate(
        arrow + label,
        (edge, 0.92),
        xycoords=("data", "axes fraction"),
        ha="left" if configured < lrs[0] else "right",
        color=colour,
        fontsize=9,
    )


def _clip_spikes(ax: Any, test: dict[str, Any]) -> None:
    """Keep a divergence spike from squashing the valley: cap the y axis above the start."""
    values = [v for v in test["loss"] + test["train_loss"] if math.isfinite(v)]
    if not values:
        return
    low = min(values)
    start = test["loss"][0]
    high = max(start, test.get("collapse_value") or start) + 0.25 * max(start - low, 0.2)
    ax.set_ylim(low - 0.05 * (high - low), min(max(values), high) + 0.02)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write `figure` to `path` (format from the suffix), atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=plot_format(path))
    return write_bytes_atomic(path, buffer.getvalue())


# -- the HTML report's pictures ------------------------------------------------------------------

SEVERITY_COLOUR = {
    "critical": "#b03a2e",
    "error": "#d35400",
    "warning": "#b9770e",
    "info": "#2e86c1",
}
# Marker shapes, so severity is not carried by colour alone.
SEVERITY_MARKER = {"critical": "X", "error": "v", "warning": "^", "info": "o"}
SPLIT_COLOUR = {"train": "#1f4e9c", "val": "#7fa7d9"}


def svg_markup(figure: Figure, name: str) -> str:
    """The figure as an `<svg>` element to inline in HTML (no XML prolog, text as paths, so no
    font is needed to show it). `name` salts its element ids: unique on the page, and the same
    every time, so a report renders to the same page."""
    buffer = io.StringIO()
    with rc_context({"svg.hashsalt": name}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    # the metadata block only names matplotlib and RDF vocabularies: nothing the page needs
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg") :], flags=re.S)


def _floats(values: list[Any]) -> list[float]:
    """JSON's nulls (NaN and infinities on the way out) back to NaN for plotting."""
    return [math.nan if v is None else float(v) for v in values]


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def class_counts_figure(counts: dict[str, Any]) -> Figure:
    """Samples per class in each split, side by side."""
    classes = counts["classes"]
    figure = Figure(figsize=(8, 3.6), layout="constrained")
    ax = figure.add_subplot()
    splits = [s for s in ("train", "val") if s in counts]
    width = 0.8 / max(1, len(splits))
    for i, split in enumerate(splits):
        x = [c + (i - (len(splits) - 1) / 2) * width for c in range(len(classes))]
        ax.bar(x, counts[split], width, label=split, color=SPLIT_COLOUR[split])
    ax.set_xticks(range(len(classes)), [_short(c) for c in classes], rotation=30, ha="right")
    ax.set_xlabel("class")
    ax.set_ylabel("samples")
    ax.set_title("Class counts per split")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return figure


def classes_per_batch_figure(batches: dict[str, Any], num_classes: int) -> Figure:
    """How many classes each batch of the sampler's epoch holds."""
    per_batch = batches["classes_per_batch"]
    figure = Figure(figsize=(8, 3.2), layout="constrained")
    ax = figure.add_subplot()
    ax.step(range(len(per_batch)), per_batch, where="mid", color="#1f4e9c", linewidth=1.5)
    ax.axhline(num_classes, color="#2a7d2a", linestyle="--", linewidth=1, label="every class")
    ax.axhline(1, color="#b03a2e", linestyle=":", linewidth=1, label="one class: no negatives")
    ax.set_ylim(0, num_classes + 0.7)
    ax.set_xlabel("batch of the first epoch")
    ax.set_ylabel("classes in the batch")
    ax.set_title(f"Classes per batch over one epoch ({batches['sampler']} sampler)")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(True, alpha=0.3)
    return figure


def batch_composition_figure(batches: dict[str, Any], classes: list[str]) -> Figure:
    """The first batches' labels, stacked by class."""
    rows = batches["first_batches"]
    figure = Figure(figsize=(8, 3.4), layout="constrained")
    ax = figure.add_subplot()
    bottom = [0] * len(rows)
    palette = colormaps["tab10"]
    for c, name in enumerate(classes):
        heights = [row[c] if c < len(row) else 0 for row in rows]
        ax.bar(range(len(rows)), heights, bottom=bottom, label=_short(name), color=palette(c % 10))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xlabel("batch")
    ax.set_ylabel("samples per class")
    ax.set_title(f"Label composition of the first {len(rows)} batches")
    ax.legend(
        fontsize=7, ncols=min(6, len(classes)), loc="upper center", bbox_to_anchor=(0.5, -0.2)
    )
    return figure


def gradient_norms_figure(norms: dict[str, float]) -> Figure:
    """The largest gradient norm of each module during the probe, log scale."""
    modules = list(norms)
    figure = Figure(figsize=(8, 0.4 * len(modules) + 1.2), layout="constrained")
    ax = figure.add_subplot()
    values = [max(v, 1e-30) if v is not None else math.nan for v in norms.values()]
    ax.barh(range(len(modules)), values, color="#1f4e9c")
    ax.set_yticks(range(len(modules)), modules, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short span
    ax.set_xlabel("gradient norm (log scale)")
    ax.set_title("Gradient norm per module (largest over the probe steps)")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    return figure


def training_loss_figure(training: dict[str, Any]) -> Figure:
    """Loss per step with the ln(B-1) collapse line, the batch floor and the doctor's events."""
    steps = training["steps"]
    figure = Figure(figsize=(8, 3.8), layout="constrained")
    ax = figure.add_subplot()
    x = steps["step"]
    ax.plot(x, _floats(steps["loss"]), color="#1f4e9c", linewidth=1, label="training loss")
    if "floor" in steps:
        ax.plot(
            x,
            _floats(steps["floor"]),
            color="#2a7d2a",
            linewidth=0.8,
            alpha=0.8,
            label="batch floor (mean ln P)",
        )
    collapse = training["collapse_value"]
    ax.axhline(
        collapse,
        color="#b03a2e",
        linestyle="--",
        linewidth=1,
        label=f"ln(B-1) = {collapse:.4f}: collapsed",
    )
    _mark_events(ax, training.get("events", []))
    ax.set_xlabel("step")
    ax.set_ylabel("SupCon loss")
    ax.set_title("Training loss per step against its collapse value and floor")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return figure


def _mark_events(ax: Any, events: list[dict[str, Any]]) -> None:
    """Each live-doctor event as a marker on the top edge, shaped and coloured by severity."""
    shown = set()
    for event in events:
        severity = event["severity"]
        label = None if severity in shown else f"doctor: {severity}"
        shown.add(severity)
        ax.axvline(event["step"], color=SEVERITY_COLOUR[severity], linewidth=0.8, alpha=0.6)
        ax.plot(
            [event["step"]],
            [1.0],
            marker=SEVERITY_MARKER[severity],
            color=SEVERITY_COLOUR[severity],
            transform=ax.get_xaxis_transform(),
            clip_on=False,
            linestyle="none",
            label=label,
        )


def training_accuracy_figure(training: dict[str, Any]) -> Figure:
    """Validation accuracy per epoch (epoch 0: the untrained model)."""
    rows = training["metrics"]
    figure = Figure(figsize=(8, 3.2), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(
        [r["epoch"] for r in rows],
        _floats([r["val_accuracy"] for r in rows]),
        marker="o",
        color="#1f4e9c",
    )
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Validation accuracy (nearest class mean) per epoch")
    ax.grid(True, alpha=0.3)
    return figure


def training_lr_figure(training: dict[str, Any]) -> Figure:
    """The learning rate the schedule applied at each step, log scale."""
    steps = training["steps"]
    figure = Figure(figsize=(8, 3.0), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(steps["step"], _floats(steps["lr"]), color="#7d3c98")
    _mark_events(ax, training.get("events", []))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate (log scale)")
    ax.set_title("Learning-rate schedule")
    ax.grid(True, which="major", alpha=0.3)
    return figure
