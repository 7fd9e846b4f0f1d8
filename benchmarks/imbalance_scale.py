"""dataset-imbalance on a 1,000,000-row manifest: it reads labels only, so it must take < 2 s.

Writes a manifest (Parquet and CSV, with a split column, 6 classes at 100:1 imbalance), a
classes.json and row-aligned arrays one element wide (40 MB: the embedded trainer opens them to
build its setup; the check never reads them) into a temporary directory, then times manifest
reading plus the check, best of three.

    .venv/bin/python benchmarks/imbalance_scale.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from quad_doctor.checks.dataset_imbalance import DatasetImbalance
from quad_doctor.context import DiagnosisContext
from quad_doctor.trainer.config import load_config

GOAL_S = 2.0
CLASS_WEIGHTS = np.array([100, 1, 1, 1, 1, 1], dtype=float)
# The smallest arrays the dataset format accepts: (N,T,3,H,W), (N,1,F,T), (N,6,T), (N,L).
TINY_ARRAYS = (
    ("video", (1, 3, 1, 1), np.uint8),
    ("audio", (1, 1, 1), np.float32),
    ("sensor", (6, 1), np.float32),
    ("text", (1,), np.int64),
)


def write_manifest(directory: Path, rows: int, fmt: str) -> None:
    """A manifest of `rows` samples over 6 imbalanced classes, 80/20 train/val, and arrays one
    element wide."""
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "sample_id": [f"s{i:07d}" for i in range(rows)],
            "label": rng.choice(6, size=rows, p=CLASS_WEIGHTS / CLASS_WEIGHTS.sum()),
            "split": np.where(rng.random(rows) < 0.8, "train", "val"),
        }
    )
    if fmt == "parquet":
        table.to_parquet(directory / "manifest.parquet", index=False)
    else:
        table.to_csv(directory / "manifest.csv", index=False)
    (directory / "classes.json").write_text(json.dumps([f"class{c}" for c in range(6)]))
    for modality, shape, dtype in TINY_ARRAYS:
        np.save(directory / f"{modality}.npy", np.ones((rows, *shape), dtype=dtype))


def time_check(directory: Path) -> tuple[float, str]:
    """Seconds to read the manifest and run the check on a fresh context; the first title."""
    config = load_config(overrides=[f'data.path="{directory}"'])
    started = time.perf_counter()
    findings = list(DatasetImbalance().run(DiagnosisContext(config)))
    return time.perf_counter() - started, findings[0].title if findings else "(none)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    table = Table(title=f"dataset-imbalance on {args.rows:,} manifest rows (goal < {GOAL_S} s)")
    for column in ("manifest", "best s", "runs s", "finding"):
        table.add_column(column)
    for fmt in ("parquet", "csv"):
        with tempfile.TemporaryDirectory() as tmp:
            write_manifest(Path(tmp), args.rows, fmt)
            runs = [time_check(Path(tmp)) for _ in range(3)]
        seconds = [s for s, _ in runs]
        table.add_row(fmt, f"{min(seconds):.2f}", " ".join(f"{s:.2f}" for s in seconds), runs[0][1])
    Console().print(table)


if __name__ == "__main__":
    main()
