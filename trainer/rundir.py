"""The run directory: resolved config, metrics, events, reports and checkpoints of one run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

RUNS_ROOT = Path("runs")


def new_run_dir(run_dir: str | Path | None) -> Path:
    """Create the run directory: the given one, or `runs/<timestamp>` with `runs/latest`."""
    if run_dir is not None:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    RUNS_ROOT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RUNS_ROOT / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = RUNS_ROOT / f"{stamp}-{suffix}"
    path.mkdir()
    point_latest(path)
    return path


def point_latest(path: Path) -> None:
    """Make `runs/latest` point at `path` (replaced atomically)."""
    latest = RUNS_ROOT / "latest"
    tmp = RUNS_ROOT / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.resolve())
    os.replace(tmp, latest)


def latest_run_dir() -> Path | None:
    """The newest run directory, through `runs/latest`, if there is one."""
    latest = RUNS_ROOT / "latest"
    return latest.resolve() if latest.exists() else None


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename: never half-written."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class JsonLines:
    """An append-only JSON-lines file, flushed after every row so nothing is lost on a crash."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, row: dict[str, Any]) -> None:
        """Write one row and flush it to disk."""
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every row written so far."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def keep(self, predicate) -> None:
        """Rewrite the file keeping only the rows for which `predicate(row)` is true."""
        rows = [row for row in self.read() if predicate(row)]
        write_text_atomic(self.path, "".join(json.dumps(row) + "\n" for row in rows))
