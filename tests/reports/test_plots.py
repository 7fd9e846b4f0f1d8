"""The report's pictures: every label inside its picture, whatever the names and numbers."""

from __future__ import annotations

import math

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from quad_doctor.reports import plots

# Agg hints its glyphs, the SVG's paths are unhinted: widths differ by a point or two.
HINTING_SLACK_IN = 0.03
LONG_NAMES = [f"climbing_stairs_with_a_bag_{i}" for i in range(30)]  # cut to 18 characters
STEPS = 20_000
EVENTS = [{"step": 10, "severity": s} for s in ("critical", "error", "warning", "info")]


def training(lr: list[float]) -> dict:
    """A long run's training section whose loss barely moves, with one event of each severity."""
    return {
        "steps": {
            "step": list(range(STEPS)),
            "loss": [3.4 - 1e-4 * math.sin(i) for i in range(STEPS)],
            "lr": lr,
            "floor": [1.2] * STEPS,
        },
        "collapse_value": 3.4339,
        "events": EVENTS,
        "metrics": [{"epoch": e, "val_accuracy": 0.5} for e in range(60)],
    }


def lr_range_test(configured_lr: float, verdict: str) -> dict:
    """An LR range test whose configured learning rate lies outside the sweep."""
    return {
        "lr": [1e-7 * 1.2**i for i in range(80)],
        "loss": [3.4 - 0.01 * i for i in range(80)],
        "train_loss": [3.4] * 80,
        "smoothed": [3.4] * 80,
        "collapse_value": 3.43,
        "valley": {"onset_lr": 1e-5, "end_lr": 1e-3},
        "suggested_lr": 1e-4,
        "warmup_start_lr": 1e-6,
        "configured_lr": configured_lr,
        "verdict": verdict,
    }


FIGURES = {
    "class counts, 30 long names, 5-digit counts": lambda: plots.class_counts_figure(
        {"classes": LONG_NAMES, "train": [10_000 + 37 * i for i in range(30)], "val": [2500] * 30}
    ),
    "class counts, one split, 2 classes": lambda: plots.class_counts_figure(
        {"classes": ["a", "b"], "train": [5, 7]}
    ),
    "classes per batch, 500 batches": lambda: plots.classes_per_batch_figure(
        {"sampler": "sequential", "classes_per_batch": [1] * 500}, 30
    ),
    "batch composition, 2 classes": lambda: plots.batch_composition_figure(
        {"first_batches": [[3, 5]] * 4}, ["a", "b"]
    ),
    "training loss, 20 000 steps": lambda: plots.training_loss_figure(training([3e-4] * STEPS)),
    "constant learning rate (minor tick labels)": lambda: plots.training_lr_figure(
        training([3e-4] * STEPS)
    ),
    "learning rate within a thousandth": lambda: plots.training_lr_figure(
        training([2e-4 + 1e-7 * i / STEPS for i in range(STEPS)])
    ),
    "accuracy, 60 epochs": lambda: plots.training_accuracy_figure(training([3e-4] * STEPS)),
    "gradient norms, 18 long module names": lambda: plots.gradient_norms_figure(
        {f"backbone.layer{i}.{j}.downsample.proj": 10.0**-i for i in range(6) for j in range(3)}
    ),
    "LR range test, configured above the sweep": lambda: plots.lr_range_figure(
        lr_range_test(5.0, "too-high")
    ),
    "LR range test, configured below the sweep": lambda: plots.lr_range_figure(
        lr_range_test(1e-9, "too-low")
    ),
}


@pytest.mark.parametrize("make", FIGURES.values(), ids=FIGURES.keys())
def test_every_label_lies_inside_the_picture(make):
    figure = make()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    drawn = figure.get_tightbbox(canvas.get_renderer())  # inches, every text and marker
    width, height = figure.get_size_inches()
    assert drawn.x0 >= -HINTING_SLACK_IN and drawn.y0 >= -HINTING_SLACK_IN, drawn
    assert drawn.x1 <= width + HINTING_SLACK_IN and drawn.y1 <= height + HINTING_SLACK_IN, drawn
    axes = figure.axes[0].get_position()  # and the plot keeps most of the picture
    assert axes.width > 0.6 and axes.height > 0.4, axes
