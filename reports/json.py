"""The JSON report: the report model in the design's schema (v1), written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from quad_doctor.findings import Report
from quad_doctor.trainer.rundir import write_text_atomic


def render(report: Report, path: str | Path | None = None) -> str:
    """The report as indented JSON; also written to `path` (atomically) when one is given."""
    text = json.dumps(finite(report.to_dict()), indent=2, allow_nan=False) + "\n"
    if path is not None:
        write_text_atomic(path, text)
    return text


def finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value
