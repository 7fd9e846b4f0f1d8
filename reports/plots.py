"""Pictures of report data with matplotlib's object API (no pyplot state, no display needed).

Renderers draw what the report holds; they compute no diagnosis.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

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
