"""Helpers the CLI tests share: run a command in-process, spell `--set`s, read one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from quad_doctor.cli import app

runner = CliRunner()


def run(*args):
    """Exit code, stdout and stderr of `quad-doctor ARGS`, run in this process."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def sets(overrides):
    """`--set KEY=VALUE` arguments for each override."""
    return [arg for override in overrides for arg in ("--set", override)]


def one_line_error(stderr, *fragments):
    """The error is one `error: ` line without a traceback, naming every fragment."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def render_run_dir(run_dir: Path) -> subprocess.CompletedProcess:
    """`quad-doctor report --run-dir DIR` in a fresh process, as a user runs it after training."""
    return subprocess.run(
        [sys.executable, "-m", "quad_doctor.cli", "report", "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
