"""The `quad-doctor` command line: parse options, call the library, render, map errors.

Only this module knows typer. Exit codes: 0 fine, 1 findings at or above `--fail-on`, 2 bad input
or usage (one line on stderr, no traceback unless `--debug`), 130 interrupted.

`--help`, `checks`, `explain` and `report` start at once: torch, numpy, pandas, matplotlib and the
trainer are imported inside the commands that run them (tests/doctor/test_startup.py).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from quad_doctor import catalog
from quad_doctor.findings import Report, Severity
from quad_doctor.reports import console as console_report
from quad_doctor.reports import json as json_report
from quad_doctor.trainer.config import Config, load_config, save_config
from quad_doctor.trainer.errors import QuadDoctorError, TrainingInterrupted, UsageError
from quad_doctor.trainer.rundir import latest_run_dir, new_run_dir

if TYPE_CHECKING:
    from quad_doctor.context import DiagnosisContext
    from quad_doctor.trainer.distributed import World

app = typer.Typer(
    name="quad-doctor",
    help="Diagnostic-first training doctor for a four-modality supervised-contrastive trainer.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()
LR_RANGE = "lr-range-test"
# lr_range.DEFAULT_ITERS, spelled out: importing it imports torch, and `--help` shows the default
# (tests/doctor/test_startup.py keeps the two equal)
LR_RANGE_ITERS = 100
error_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="TOML config file (default: the embedded default).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one key: KEY=VALUE, dotted key, TOML value; repeatable."),
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
RunDirOption = Annotated[
    Path | None,
    typer.Option("--run-dir", help="Run directory (default: runs/<timestamp>, runs/latest)."),
]
SetupOption = Annotated[
    str | None,
    typer.Option(
        "--setup",
        help="Diagnose your own training code: FILE.py:FUNCTION or package.module:FUNCTION "
        "returning a quad_doctor.TrainingSetup.",
    ),
]
ChecksOption = Annotated[
    list[str] | None,
    typer.Option(help="Check names, comma-separated or repeated (see `quad-doctor checks`)."),
]


class FailOn(enum.StrEnum):
    """The severity at or above which `diagnose` exits 1."""

    critical = "critical"
    error = "error"
    warning = "warning"
    never = "never"


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


def _source(config: Path | None, overrides: list[str] | None) -> str:
    """Where the config came from, as the report's header shows it."""
    source = str(config) if config else "embedded default"
    return source + "".join(f" --set {item}" for item in overrides or [])


def _names(values: list[str] | None) -> list[str]:
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


def exit_code(report: Report, fail_on: FailOn) -> int:
    """1 when a finding is at or above `fail_on`, or a check crashed; else 0."""
    if any(run.status == "error" for run in report.checks) and fail_on is not FailOn.never:
        return 1
    if fail_on is FailOn.never or report.worst is None:
        return 0
    return int(report.worst >= Severity.parse(fail_on.value))


def _context(
    setup: str | None, config: Path | None, overrides: list[str] | None
) -> tuple[DiagnosisContext, Config | None]:
    """The diagnosis context: the user's setup (`--setup`), else the embedded trainer's config."""
    from quad_doctor.context import DiagnosisContext

    if setup is None:
        resolved = _config(config, overrides)
        return DiagnosisContext(resolved), resolved
    if config is not None or overrides:
        raise UsageError(
            "--setup with --config/--set: config keys configure the embedded trainer, not your code"
        )
    from quad_doctor.user_setup import load_setup

    ctx = DiagnosisContext(load_setup(setup))
    ctx.source = setup
    return ctx, None


def _diagnose_with_progress(
    config: Config | None, ctx: DiagnosisContext, only: Sequence[str], skip: Sequence[str] = ()
) -> Report:
    """Run the diagnosis under a transient progress bar naming the check that runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from quad_doctor.engine import diagnose as run_diagnosis

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task("preparing", total=None)

        def on_check(name: str, index: int, total: int) -> None:
            progress.update(task, description=name, completed=index, total=total)

        def on_progress(what: str, done: int, total: int) -> None:
            progress.update(task, description=what, completed=done, total=total)

        ctx.on_progress = on_progress
        return run_diagnosis(config, only, skip, ctx=ctx, on_check=on_check)


@app.command()
def diagnose(
    config: ConfigOption = None,
    set_: SetOption = None,
    setup: SetupOption = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the JSON report here.")
    ] = None,
    html_path: Annotated[
        Path | None,
        typer.Option("--html", help="Also write the report as one self-contained HTML page here."),
    ] = None,
    only: ChecksOption = None,
    skip: ChecksOption = None,
    fail_on: Annotated[
        FailOn, typer.Option("--fail-on", help="Exit 1 on findings at or above this severity.")
    ] = FailOn.error,
    run_dir: RunDirOption = None,
    full_scan: Annotated[
        bool,
        typer.Option(
            "--full-scan",
            help="Read every input instead of a sample bounded by work (data-integrity), with a "
            "progress bar; on a large dataset this takes as long as reading it.",
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Run the ordered checks against the trainer built from the config, or your own training code
    (--setup); print a ranked report."""

    def action() -> int:
        ctx, resolved = _context(setup, config, set_)
        ctx.full_scan = full_scan
        report = _diagnose_with_progress(resolved, ctx, _names(only), _names(skip))
        if resolved is not None:
            report.context["config_source"] = _source(config, set_)
        console_report.render(report, console)
        if json_path is not None:
            json_report.render(report, json_path)
        if html_path is not None:
            _write_html(report, html_path)
        target = new_run_dir(run_dir)
        if resolved is not None:
            save_config(resolved, target / "config.toml")
        json_report.render(report, target / "report.json")
        written = [str(p) for p in (json_path, html_path) if p is not None]
        written.append(str(target / "report.json"))
        console.print(f"report: {' and '.join(written)}", highlight=False, soft_wrap=True)
        return exit_code(report, fail_on)

    raise typer.Exit(_guarded(debug, action))


@app.command("lr-range-test")
def lr_range_test(
    config: ConfigOption = None,
    set_: SetOption = None,
    setup: SetupOption = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the JSON report here.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Also draw the curve here (.svg, .png or .pdf)."),
    ] = None,
    iters: Annotated[
        int, typer.Option("--iters", min=10, max=1000, help="Most training steps of the sweep.")
    ] = LR_RANGE_ITERS,
    repeats: Annotated[
        int,
        typer.Option(
            "--repeats", min=1, max=5, help="Sweeps over different data orders; they must agree."
        ),
    ] = 1,
    start_lr: Annotated[
        float | None, typer.Option("--start-lr", help="First LR (default: from the weights).")
    ] = None,
    end_lr: Annotated[
        float | None, typer.Option("--end-lr", help="Last LR (default: from the weights).")
    ] = None,
    fail_on: Annotated[
        FailOn, typer.Option("--fail-on", help="Exit 1 on findings at or above this severity.")
    ] = FailOn.warning,
    run_dir: RunDirOption = None,
    debug: DebugOption = False,
) -> None:
    """The LR range test alone: curve, suggested LR and warm-up start, verdict on the configured LR.

    The cheap upstream checks run too, so a curve that does not respond to the LR is blamed on
    what causes it (the sampler, the loss bounds, the data).
    """

    def action() -> int:
        # torch, the checks and matplotlib (0.4 s): only this command pays for them
        from quad_doctor.checks import ALL_CHECKS
        from quad_doctor.engine import CHEAP_PHASES, lr_range_report
        from quad_doctor.reports.plots import lr_range_figure, plot_format, save_figure

        if plot is not None:
            plot_format(plot)  # a bad suffix fails before any work
        for name, value in (("--start-lr", start_lr), ("--end-lr", end_lr)):
            if value is not None and not (0 < value < float("inf")):
                raise UsageError(f"{name}: must be a positive learning rate, got {value:g}")
        if start_lr and end_lr and start_lr >= end_lr:
            raise UsageError(f"--start-lr {start_lr:g} must be below --end-lr {end_lr:g}")
        ctx, resolved = _context(setup, config, set_)
        ctx.options[LR_RANGE] = {
            "iters": iters,
            "repeats": repeats,
            "start_lr": start_lr,
            "end_lr": end_lr,
        }
        names = [c.name for c in ALL_CHECKS if c.phase in CHEAP_PHASES or c.name == LR_RANGE]
        report = _diagnose_with_progress(resolved, ctx, names)
        report = lr_range_report(report)
        if resolved is not None:
            report.context["config_source"] = _source(config, set_)
        test = report.lr_range_test
        console.print(Text("quad-doctor lr-range-test", style="bold"))
        if test is None:
            skipped = next(run for run in report.checks if run.name == LR_RANGE)
            console.print(f"lr-range-test {skipped.status}: {skipped.message}")
            return exit_code(report, fail_on)
        console.print(console_report.lr_range_curve(test))
        console.print()
        console.print(console_report.lr_range_table(test))
        console.print()
        for ranked in report.findings:
            console.print(console_report.ranked_block(ranked))
        target = new_run_dir(run_dir)
        written = [str(p) for p in (json_path, plot) if p is not None]
        figure = lr_range_figure(test)
        if plot is not None:
            save_figure(figure, plot)
        save_figure(figure, target / "lr_range_test.svg")
        if json_path is not None:
            json_report.render(report, json_path)
        if resolved is not None:
            save_config(resolved, target / "config.toml")
        json_report.render(report, target / "report.json")
        written += [str(target / "report.json"), str(target / "lr_range_test.svg")]
        console.print(f"written: {', '.join(written)}", highlight=False, soft_wrap=True)
        return exit_code(report, fail_on)

    raise typer.Exit(_guarded(debug, action))


def _manual_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """A borderless table whose last column (the manual's first line) wraps."""
    table = Table(box=None, header_style="dim", padding=(0, 2))
    for column in columns:
        table.add_column(column, no_wrap=column != columns[-1])
    for row in rows:
        table.add_row(*row)
    return table


@app.command("checks")
def list_checks() -> None:
    """List the checks in causal order, with their phase and first line of documentation; then
    the live rules `quad-doctor train` adds."""
    checks = [
        (str(check.order), check.name, check.phase, check.summary) for check in catalog.checks()
    ]
    console.print(_manual_table(("order", "check", "phase", "what it checks"), checks))
    console.print()
    console.print("live rules of quad-doctor train", style="bold")
    rules = [(str(rule.order), rule.name, rule.summary) for rule in catalog.live_rules()]
    console.print(_manual_table(("order", "rule", "what it watches"), rules))


@app.command()
def explain(
    name: Annotated[
        str, typer.Argument(help="A check or live rule name, as `quad-doctor checks` lists.")
    ],
    debug: DebugOption = False,
) -> None:
    """Print one check's documentation: what it checks, why it matters, an example, the fix.

    A live rule of the same name follows the check's; a live rule of its own is printed alone.
    """

    def action() -> None:
        rule = catalog.find_live_rule(name)
        if rule is not None and rule in catalog.live_only_rules():
            console.print(f"{rule.name}  (live rule of quad-doctor train)", style="bold")
            console.print(rule.doc, markup=False, highlight=False)
            return
        check = catalog.find_check(name)
        console.print(f"{check.name}  (phase {check.phase}, order {check.order})", style="bold")
        console.print(check.doc, markup=False, highlight=False)
        if rule is not None:
            console.print()
            console.print(f"Live rule  ({rule.name} in quad-doctor train)", style="bold")
            console.print(rule.doc, markup=False, highlight=False)

    _guarded(debug, action)


@app.command()
def report(
    from_path: Annotated[
        Path | None, typer.Option("--from", help="A saved report.json (default: the latest run's).")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Render this run directory's report.json.")
    ] = None,
    html: Annotated[
        bool, typer.Option("--html", help="Write one self-contained HTML page instead.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where --html writes (default: beside the JSON)."),
    ] = None,
    fail_on: Annotated[
        FailOn, typer.Option("--fail-on", help="Exit 1 on findings at or above this severity.")
    ] = FailOn.never,
    debug: DebugOption = False,
) -> None:
    """Render a saved report.json: a diagnosis, an LR range test or a training run.

    In the console, or with --html as one HTML page that opens offline.
    """

    def action() -> int:
        if output is not None and not html:
            raise UsageError("-o/--output: only with --html")
        path = _report_path(from_path, run_dir)
        saved = _load_report(path)
        if html:
            target = output or path.with_suffix(".html")
            _write_html(saved, target)
            console.print(f"report: {target}", highlight=False, soft_wrap=True)
        else:
            console_report.render(saved, console, title="quad-doctor report")
        return exit_code(saved, fail_on)

    raise typer.Exit(_guarded(debug, action))


def _write_html(report: Report, path: Path) -> None:
    """The HTML page for `report` at `path`; an unwritable path is a one-line error."""
    # jinja2 and matplotlib cost ~0.5 s to import: only the commands that draw pay it
    from quad_doctor.reports import html as html_report

    try:
        html_report.render(report, path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the HTML report: {exc.strerror}") from None


def _report_path(from_path: Path | None, run_dir: Path | None) -> Path:
    """`--from`, else `--run-dir`'s report.json, else the latest run's."""
    if from_path is not None and run_dir is not None:
        raise UsageError("--from and --run-dir: give one or the other")
    if from_path is not None:
        return from_path
    directory = run_dir or latest_run_dir()
    if directory is None:
        raise UsageError("no run yet: runs/latest does not exist (use --from or --run-dir)")
    return directory / "report.json"


def _load_report(path: Path) -> Report:
    """The report saved at `path`; a UsageError naming the file when it cannot be one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: report file not found") from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not valid JSON: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        return Report.from_dict(data)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


@app.command()
def train(
    config: ConfigOption = None,
    set_: SetOption = None,
    run_dir: RunDirOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --run-dir (default: latest).")
    ] = False,
    no_doctor: Annotated[
        bool, typer.Option("--no-doctor", help="Train without the live doctor.")
    ] = False,
    stop_on: Annotated[
        FailOn,
        typer.Option(
            "--stop-on",
            help="Save a checkpoint and stop at the first live finding at or above this severity.",
        ),
    ] = FailOn.never,
    nproc_per_node: Annotated[
        int | None,
        typer.Option(
            "--nproc-per-node",
            min=1,
            help="Processes on this machine (DDP under torchrun; sets dist.nproc_per_node).",
        ),
    ] = None,
    nnodes: Annotated[
        int, typer.Option("--nnodes", min=1, help="Machines (multi-node; with --rdzv-endpoint).")
    ] = 1,
    rdzv_endpoint: Annotated[
        str | None,
        typer.Option("--rdzv-endpoint", help="HOST:PORT every node meets at (multi-node)."),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Train the quadmodal model with the live doctor watching every step.

    Writes config, metrics, checkpoints, the doctor's events.jsonl and its live report.json to
    the run directory. Exits 1 when the doctor stopped training (--stop-on). With
    --nproc-per-node N > 1 it starts N processes under torchrun (DDP; batch size per process);
    started by torchrun itself, it runs as one of them.
    """

    def action() -> int:
        from quad_doctor.trainer.distributed import close_world, init_world, launched_by_torchrun
        from quad_doctor.trainer.launch import launch_command, run_workers

        directory = run_dir
        if resume:
            directory = directory or latest_run_dir()
            if directory is None or not (directory / "checkpoints" / "last.pt").is_file():
                raise UsageError(
                    f"--resume: no checkpoint to resume in {directory or 'runs/latest'}"
                )
        overrides = list(set_ or [])
        if nproc_per_node is not None:
            overrides.append(f"dist.nproc_per_node={nproc_per_node}")
        resolved = _config(config if config or not resume else directory / "config.toml", overrides)
        if resume and resolved.to_dict() != load_config(directory / "config.toml").to_dict():
            raise UsageError(
                f"{directory / 'config.toml'}: the run was started with another config (or "
                "another dist.nproc_per_node); resume with the same settings or use a new --run-dir"
            )
        multi_node = nnodes > 1 or rdzv_endpoint is not None
        if not launched_by_torchrun() and (resolved.dist.nproc_per_node > 1 or multi_node):
            target = directory if resume else new_run_dir(directory)
            command = launch_command(resolved, nnodes, rdzv_endpoint)
            command += _worker_args(config, overrides, target, resume, no_doctor, stop_on, debug)
            console.print(f"run directory: {target}", highlight=False)
            return run_workers(command, resolved.dist.nproc_per_node)
        world = init_world(resolved.train.device)
        code = _train_process(resolved, world, directory, resume, no_doctor, stop_on, config, set_)
        # not on an error: the other ranks may be waiting elsewhere, and torchrun stops them
        close_world(world)
        return code

    raise typer.Exit(_guarded(debug, action))


def _worker_args(
    config: Path | None,
    overrides: list[str],
    target: Path,
    resume: bool,
    no_doctor: bool,
    stop_on: FailOn,
    debug: bool,
) -> list[str]:
    """The `train` arguments each torchrun worker gets: the same run, one fixed run directory."""
    args = ["train", "--run-dir", str(target), "--stop-on", stop_on.value]
    if config is not None:
        args += ["--config", str(config)]
    for override in overrides:
        args += ["--set", override]
    args += [flag for flag, on in (("--resume", resume), ("--no-doctor", no_doctor)) if on]
    return args + (["--debug"] if debug else [])


def _train_process(
    resolved: Config,
    world: World,
    directory: Path | None,
    resume: bool,
    no_doctor: bool,
    stop_on: FailOn,
    config: Path | None,
    set_: list[str] | None,
) -> int:
    """Train in this process (the only one, or one rank of many); rank 0 speaks and writes."""
    from quad_doctor.engine import verify as verify_remedy
    from quad_doctor.live import LiveDoctor
    from quad_doctor.trainer.loop import Trainer

    if not world.is_main:
        console.quiet = True
    doctor = None
    if not no_doctor and world.is_main:
        stop = None if stop_on is FailOn.never else Severity.parse(stop_on.value)
        source = {"config_source": _source(config, set_)}
        doctor = LiveDoctor(stop_on=stop, context=source, verify=verify_remedy)
    with console.status("preparing data and model"):
        trainer = Trainer(
            resolved,
            callbacks=[doctor] if doctor else [],
            console=console,
            world=world,
            watch_rank_gradients=not no_doctor,  # every rank measures; rank 0's doctor reads
        )
    target = directory if resume else new_run_dir(directory)
    if not world.distributed:
        console.print(f"run directory: {target}")
    rows = trainer.fit(target, resume=resume)
    if not world.is_main:
        return 0
    last = rows[-1]
    if doctor is not None:
        report = doctor.report()  # report.json and report.html are written by now
        if report.findings:
            console.print()
            for ranked in report.findings:
                console.print(console_report.ranked_block(ranked))
        console.print(console_report.summary_line(report))
    if trainer.stopped_checkpoint is not None:
        console.print(
            f"stopped: {trainer.stop_reason}\ncheckpoint: {trainer.stopped_checkpoint} "
            "(continue with --resume)",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    console.print(
        f"done: {len(rows) - 1} epochs, val_accuracy {last['val_accuracy']:.3f}, "
        f"metrics in {target / 'metrics.jsonl'}"
        + ("" if doctor is None else f", report in {target / 'report.json'} and .html"),
        highlight=False,
        soft_wrap=True,
    )
    return 0


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
        from quad_doctor.trainer.synthetic import write_dataset

        resolved = _config(config, set_)
        with console.status(f"generating {resolved.data.synthetic.num_samples} samples"):
            path = write_dataset(resolved.data.synthetic, directory, force=force)
        console.print(f"wrote {resolved.data.synthetic.num_samples} samples to {path}")

    _guarded(debug, action)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # how torchrun starts the workers: python -m quad_doctor.cli
    main()
