"""Experiment configs: TOML files under configs/, read into plain dicts."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "base.toml"

# Where the data lives when it is not under the project (a shared disk, a scratch directory).
DATA_ENV_VAR = "HAR_DATA"


def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG) -> dict[str, Any]:
    """Read a TOML config; a relative path is taken from the current directory."""
    with open(path, "rb") as f:
        return tomllib.load(f)


def resolve_data_dir(config: dict[str, Any]) -> Path:
    """The dataset directory: $HAR_DATA if set, else the config's data_dir (relative paths are
    taken from the project root, not the current directory)."""
    from_env = os.environ.get(DATA_ENV_VAR)
    data_dir = Path(from_env) if from_env else Path(config["data"]["data_dir"])
    if not data_dir.is_absolute():
        data_dir = PROJECT_ROOT / data_dir
    if not data_dir.is_dir():
        source = f"${DATA_ENV_VAR}" if from_env else "data.data_dir in the config"
        raise FileNotFoundError(
            f"HAR dataset not found at {data_dir} (from {source}). Download it first: "
            "`quad-doctor make-dataset examples/har_project/data` (from the quad-doctor "
            f"checkout), or point ${DATA_ENV_VAR} at an existing copy."
        )
    return data_dir
