"""The `quad-doctor` command line: parse options, call the library, render, map errors.

Only this module knows typer. Exit codes: 0 fine, 1 findings at or above `--fail-on`, 2 bad input
or usage (one line on stderr, no traceback unless `--debug`), 130 interrupted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from quad_doctor.trainer.config import Config, load_config
from quad_doctor.trainer.errors import QuadDoctorError, UsageError
from quad_doctor.trainer.loop import Trainer, TrainingInterrupted
from quad_doctor.trainer.rundir import latest_run_dir, new_run_dir
from quad_doctor.trainer.synthetic import write_dataset

app = typer.Typer(
    name="quad-doctor",
    help="Diagnostic-first training doctor for a four-modality supervised-contrastive trainer.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()
error_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML config file (default: the embedded default).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one key: KEY=VALUE, dotted key, TOML value; repeatable."),
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]

T = TypeVar("T")


def _guarded(debug: bool, action: Callable[[], T]) -> T:
    """Run `action`, turning our errors into one line on stderr and exit code 2."""
    try:
        return action()
    except QuadDoctorError as exc:
        if debug:
            raise
        error_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except TrainingInterrupted as exc:
        error_console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        error_console.print("interrupted", markup=False, highlight=False)
        raise typer.Exit(130) from None


def _config(config: Path | None, overrides: list[str] | None) -> Config:
    return load_config(config, overrides or [])


@app.command()
def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="Run directory (default: runs/<timestamp>, runs/latest)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --run-dir (default: latest).")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Train the quadmodal model, writing config, metrics and checkpoints to the run directory."""

    def action() -> None:
        directory = run_dir
        if resume:
            directory = directory or latest_run_dir()
            if directory is None or not (directory / "checkpoints" / "last.pt").is_file():
                raise UsageError(
                    f"--resume: no checkpoint to resume in {directory or 'runs/latest'}"
                )
        resolved = _config(config if config or not resume else directory / "config.toml", set_)
        with console.status("preparing data and model"):
            trainer = Trainer(resolved, console=console)
        target = directory if resume else new_run_dir(directory)
        console.print(f"run directory: {target}")
        rows = trainer.fit(target, resume=resume)
        last = rows[-1]
        console.print(
            f"done: {len(rows) - 1} epochs, val_accuracy {last['val_accuracy']:.3f}, "
            f"metrics in {target / 'metrics.jsonl'}"
        )

    _guarded(debug, action)


@app.command("make-dataset")
def make_dataset(
    directory: Annotated[Path, typer.Argument(help="Where to write the dataset.")],
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty directory.")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    debug: DebugOption = False,
) -> None:
    """Write a synthetic dataset in the on-disk format (data.synthetic.* knobs apply)."""

    def action() -> None:
        resolved = _config(config, set_)
        with console.status(f"generating {resolved.data.synthetic.num_samples} samples"):
            path = write_dataset(resolved.data.synthetic, directory, force=force)
        console.print(f"wrote {resolved.data.synthetic.num_samples} samples to {path}")

    _guarded(debug, action)


def main() -> None:
    """Console-script entry point."""
    app()
