"""Pictures of report data with matplotlib's object API (no pyplot state, no display needed).

Renderers draw what the report holds; they compute no diagnosis. matplotlib is imported when a
picture is drawn, not with this module: it costs ~0.35 s, which a command that draws nothing
(or a training run before its report) should not pay.
"""

from __future__ import annotations

import functools
import io
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quad_doctor.trainer.errors import UsageError
from quad_doctor.trainer.rundir import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.text import Text

PLOT_FORMATS = ("svg", "png", "pdf")
VERDICT_COLOUR = {"ok": "#2a7d2a", "too-high": "#c0392b", "too-low": "#b9770e", "not-lr": "#7f8c8d"}
# Room around the axes, in points, after matplotlib's defaults: a tick and its label's pad
# (3.5 + 3.5), an axis label's pad and line (4 + 12 for 10 pt text), the title's pad and line
# (6 + 14 for 12 pt text), and air at the figure's edge. Only the tick labels vary, and are
# measured: constrained layout measured every text of a chart, twice (~0.1 s a chart).
TICK_SPACE = 7.0
AXIS_LABEL_SPACE = 16.0
TITLE_SPACE = 20.0
EDGE = 4.0
# a tick exactly at an end of the axis, within rounding, is drawn
PLACE_TOLERANCE = 1e-6
LEGEND_FONT_SIZE = 7


def plot_format(path: str | Path) -> str:
    """The format `path`'s suffix names; any other suffix is a usage error (exit 2)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise UsageError(f"--plot {path}: unknown image format; use .svg, .png or .pdf")
    return suffix


def lr_range_figure(test: dict[str, Any]) -> Figure:
    """The LR range test's curves with the valley, the suggestion and the configured LR marked."""
    ax = _axes(8, 4.5)
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
    return _fit(ax)


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


# -- layout: fixed margins from measured tick labels ----------------------------------------------


def _axes(width: float, height: float) -> Axes:
    """One axes in a new figure of `width` by `height` inches; `_fit` gives it its margins."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height)).add_subplot()


def _fit(ax: Axes, below: float = 0.0) -> Figure:
    """Margins for `ax` that hold its tick labels, axis labels and title, with `below` points
    more under them (a legend at the figure's foot); returns the figure."""
    figure = ax.get_figure()
    margins: dict[str, float] = {}
    # a locator picks its ticks by the axes' length, which the margins set: settle in a few steps
    for _ in range(3):
        fitted = _margins(ax, below)
        if fitted == margins:
            break
        margins = fitted
        figure.subplots_adjust(**margins)
    return figure


def _margins(ax: Axes, below: float) -> dict[str, float]:
    """`subplots_adjust`'s fractions that fit what is drawn around `ax` in its figure."""
    width, height = ax.get_figure().get_size_inches() * 72
    y_widths = [_drawn_size(label)[0] for _, label in _tick_labels(ax.yaxis)]
    x_labels = [(place, label, *_drawn_size(label)) for place, label in _tick_labels(ax.xaxis)]
    left = EDGE + max(y_widths, default=0) + TICK_SPACE + AXIS_LABEL_SPACE * bool(ax.get_ylabel())
    bottom = EDGE + below + max((h for *_, h in x_labels), default=0) + TICK_SPACE
    bottom += AXIS_LABEL_SPACE * bool(ax.get_xlabel())
    top = EDGE + TITLE_SPACE * bool(ax.get_title())
    right = EDGE
    # an x tick label reaching past an end of the axes (rotated class names, the last number)
    # widens that side; a label's reach is its part on either side of its tick
    reaches = []
    for place, label, drawn_width, _ in x_labels:
        share = {"right": 1.0, "center": 0.5, "left": 0.0}[label.get_horizontalalignment()]
        reaches.append((place, share * drawn_width, (1 - share) * drawn_width))
    for place, _, reach_right in reaches:
        if place > 0:
            right = max(right, (EDGE + reach_right - (1 - place) * (width - left)) / place)
    for place, reach_left, _ in reaches:
        if place < 1:
            left = max(left, (EDGE + reach_left - place * (width - right)) / (1 - place))
    return {
        "left": left / width,
        "right": 1 - right / width,
        "bottom": bottom / height,
        "top": 1 - top / height,
    }


def _tick_labels(axis: Axis) -> list[tuple[float, Text]]:
    """The tick labels a draw shows on `axis`, each with its place along the axes (0 to 1)."""
    along = 0 if axis is axis.axes.xaxis else 1
    data_to_axes = axis.axes.transScale + axis.axes.transLimits
    shown = []
    for label in axis.get_ticklabels(which="both"):  # formats them, as a draw does
        point = [1.0, 1.0]  # 1 is on every scale
        point[along] = label.get_position()[along]
        place = data_to_axes.transform(point)[along]
        if label.get_text() and -PLACE_TOLERANCE <= place <= 1 + PLACE_TOLERANCE:
            shown.append((place, label))
    return shown


def _drawn_size(label: Text) -> tuple[float, float]:
    """A label's width and height in points as drawn (rotated)."""
    # a copy: the cache keeps its key, and a label's font may change after
    width, height = _text_size(label.get_text(), label.get_fontproperties().copy())
    angle = math.radians(label.get_rotation())
    cos, sin = abs(math.cos(angle)), abs(math.sin(angle))
    return width * cos + height * sin, width * sin + height * cos


@functools.lru_cache(maxsize=4096)
def _text_size(text: str, font: FontProperties) -> tuple[float, float]:
    """One line's width and height in points in `font`, from its glyphs' metrics; cached, as
    the same tick labels are measured on every pass of `_fit` and every page."""
    from matplotlib.cbook import is_math_text
    from matplotlib.textpath import text_to_path

    width, height, _ = text_to_path.get_text_width_height_descent(
        text, font, ismath=is_math_text(text)
    )
    return width, max(height, font.get_size_in_points())  # a line is as tall as its font


def _legend_height(rows: int, font_size: float) -> float:
    """A legend's height in points with its pad to the anchor, by matplotlib's defaults: rows a
    line and a fifth tall, half a line apart, in 0.4 lines of border pad, 0.5 from the anchor."""
    return font_size * (1.2 * rows + 0.5 * (rows - 1) + 2 * 0.4 + 0.5)


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
    from matplotlib import rc_context

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
    ax = _axes(8, 3.6)
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
    return _fit(ax)


def classes_per_batch_figure(batches: dict[str, Any], num_classes: int) -> Figure:
    """How many classes each batch of the sampler's epoch holds."""
    per_batch = batches["classes_per_batch"]
    ax = _axes(8, 3.2)
    ax.step(range(len(per_batch)), per_batch, where="mid", color="#1f4e9c", linewidth=1.5)
    ax.axhline(num_classes, color="#2a7d2a", linestyle="--", linewidth=1, label="every class")
    ax.axhline(1, color="#b03a2e", linestyle=":", linewidth=1, label="one class: no negatives")
    ax.set_ylim(0, num_classes + 0.7)
    ax.set_xlabel("batch of the first epoch")
    ax.set_ylabel("classes in the batch")
    ax.set_title(f"Classes per batch over one epoch ({batches['sampler']} sampler)")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(True, alpha=0.3)
    return _fit(ax)


def batch_composition_figure(batches: dict[str, Any], classes: list[str]) -> Figure:
    """The first batches' labels, stacked by class."""
    from matplotlib import colormaps

    rows = batches["first_batches"]
    ax = _axes(8, 3.4)
    bottom = [0] * len(rows)
    palette = colormaps["tab10"]
    for c, name in enumerate(classes):
        heights = [row[c] if c < len(row) else 0 for row in rows]
        ax.bar(range(len(rows)), heights, bottom=bottom, label=_short(name), color=palette(c % 10))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_xlabel("batch")
    ax.set_ylabel("samples per class")
    ax.set_title(f"Label composition of the first {len(rows)} batches")
    # under the axis label, at the foot of the figure
    columns = min(6, len(classes))
    ax.legend(
        fontsize=LEGEND_FONT_SIZE,
        ncols=columns,
        loc="lower center",
        bbox_to_anchor=(0.5, 0),
        bbox_transform=ax.figure.transFigure,
    )
    return _fit(ax, below=_legend_height(math.ceil(len(classes) / columns), LEGEND_FONT_SIZE))


def gradient_norms_figure(norms: dict[str, float]) -> Figure:
    """The largest gradient norm of each module during the probe, log scale."""
    from matplotlib.ticker import NullFormatter

    modules = list(norms)
    ax = _axes(8, 0.4 * len(modules) + 1.2)
    values = [max(v, 1e-30) if v is not None else math.nan for v in norms.values()]
    ax.barh(range(len(modules)), values, color="#1f4e9c")
    ax.set_yticks(range(len(modules)), modules, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short span
    ax.set_xlabel("gradient norm (log scale)")
    ax.set_title("Gradient norm per module (largest over the probe steps)")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    return _fit(ax)


def training_loss_figure(training: dict[str, Any]) -> Figure:
    """Loss per step with the ln(B-1) collapse line, the batch floor and the doctor's events."""
    steps = training["steps"]
    ax = _axes(8, 3.8)
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
    collapse = training.get("collapse_value")  # absent for a loss that is not pair-based
    if collapse is not None:
        ax.axhline(
            collapse,
            color="#b03a2e",
            linestyle="--",
            linewidth=1,
            label=f"ln(B-1) = {collapse:.4f}: collapsed",
        )
    _mark_events(ax, training.get("events", []))
    ax.set_xlabel("step")
    ax.set_ylabel("SupCon loss" if collapse is not None else "loss")
    ax.set_title(
        "Training loss per step against its collapse value and floor"
        if collapse is not None
        else "Training loss per step"
    )
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return _fit(ax)


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
    from matplotlib.ticker import MaxNLocator

    rows = training["metrics"]
    ax = _axes(8, 3.2)
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
    return _fit(ax)


def training_lr_figure(training: dict[str, Any]) -> Figure:
    """The learning rate the schedule applied at each step, log scale."""
    steps = training["steps"]
    ax = _axes(8, 3.0)
    ax.plot(steps["step"], _floats(steps["lr"]), color="#7d3c98")
    _mark_events(ax, training.get("events", []))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate (log scale)")
    ax.set_title("Learning-rate schedule")
    ax.grid(True, which="major", alpha=0.3)
    return _fit(ax)
