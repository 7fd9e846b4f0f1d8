"""What `quad-doctor diagnose` costs as the dataset grows: 1,500, 15,000 and 150,000 samples.

Writes the synthetic datasets once into `--cache` (150,000 samples are 3.1 GB and take minutes to
generate; later runs reuse them), then times `quad-doctor diagnose --set data.path=DIR --json
out.json` on each, every run in a fresh process, `--repeats` times, and prints the median seconds
of each check (the report's `duration_s`), of the engine, and of the whole process with its CPU
time. The last columns are a user's setup (`examples/har_project`, 1,500 samples) whose dataset
takes `--delay-ms` per item, read in the main process as the example's loader does, and through
`--workers` loader worker processes. The page cache is warm (every file read once first) unless
`--cold` drops it before each run (root only).

A second table checks that the faults the fault matrix plants in the data are still found at every
size: NaN/Inf in 5 % and in 0.1 % of the sensor rows, and each stream dead (constant). Each is a
copy of the healthy dataset's directory with one array rewritten and the others linked, kept in the
cache too. `--full-scan` times `diagnose --full-scan` instead.

    .venv/bin/python benchmarks/scale.py [--cache DIR] [--repeats 3] [--cold] [--full-scan]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from quad_doctor.trainer.config import SyntheticConfig
from quad_doctor.trainer.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[1]
QUAD_DOCTOR = Path(sys.executable).with_name("quad-doctor")
SIZES = (1_500, 15_000, 150_000)
# The targets of issue 16: data-integrity at 150,000 within twice its time at 15,000; a whole
# diagnose of 150,000 samples within 10 s, of the slow user setup within 20 s.
GROWTH_GOAL = 2.0
WHOLE_GOAL_S = 10.0
USER_GOAL_S = 20.0
# What the fault matrix plants in the data (tests/fault_scenarios.toml), made on disk by hand.
FAULTS = {
    "NaN, 5 % of sensor rows": ("nan", "sensor", 0.05),
    "NaN, 0.1 % of sensor rows": ("nan", "sensor", 0.001),
    "dead video": ("dead", "video", 128),
    "dead audio": ("dead", "audio", 0.0),
    "dead sensor": ("dead", "sensor", 0.0),
    "dead text": ("dead", "text", 1),
}
EXPECTED = {"nan": "critical", "dead": "error"}
ARRAYS = ("video", "audio", "sensor", "text")
OTHER_FILES = ("manifest.csv", "classes.json")


def slow_har_setup():
    """`--setup benchmarks/scale.py:slow_har_setup`: the example project with every item
    `QD_DELAY_MS` late, on the dataset at `HAR_DATA`."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "examples" / "har_project"))
    import doctor_setup
    from user_setup_cost import slowed

    delay = float(os.environ["QD_DELAY_MS"]) / 1000
    setup, _ = slowed(doctor_setup.build(), delay, int(os.environ.get("QD_WORKERS", "0")))
    return setup


def dataset(cache: Path, size: int) -> Path:
    """The healthy synthetic dataset of `size` samples, written once."""
    target = cache / f"n{size}"
    if not (target / "manifest.csv").is_file():
        started = time.perf_counter()
        write_dataset(SyntheticConfig(num_samples=size), target, force=True)
        print(f"wrote {target} in {time.perf_counter() - started:.0f} s", flush=True)
    return target


def faulty(healthy: Path, name: str) -> Path:
    """A copy of `healthy` with one array rewritten to hold the fault `name` (the rest linked)."""
    kind, modality, value = FAULTS[name]
    target = healthy.with_name(f"{healthy.name}-{kind}-{modality}-{value}")
    if (target / "manifest.csv").is_file():
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=healthy.parent))
    for item in (*OTHER_FILES, *(f"{m}.npy" for m in ARRAYS if m != modality)):
        (staging / item).symlink_to(healthy / item)
    source = np.load(healthy / f"{modality}.npy", mmap_mode="r")
    array = np.lib.format.open_memmap(
        staging / f"{modality}.npy", mode="w+", dtype=source.dtype, shape=source.shape
    )
    if kind == "dead":
        array[...] = value
    else:  # as the generator does: one element of each chosen row NaN or Inf
        array[...] = source
        rng = np.random.default_rng(1)
        rows = rng.choice(len(array), size=max(1, round(value * len(array))), replace=False)
        channels = rng.integers(0, array.shape[1], size=len(rows))
        steps = rng.integers(0, array.shape[2], size=len(rows))
        array[rows, channels, steps] = np.where(rng.random(len(rows)) < 0.5, np.nan, np.inf)
    array.flush()
    del array
    staging.rename(target)
    return target


def warm(directory: Path) -> None:
    """Read every file of `directory` once, so it sits in the page cache."""
    for path in directory.iterdir():
        with path.open("rb") as file:
            while file.read(2**24):
                pass


def drop_page_cache() -> bool:
    """Empty the page cache (root only); whether it worked."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def diagnose(arguments: list[str], work: Path, env: dict[str, str]) -> dict:
    """`quad-doctor diagnose ARGUMENTS` in a fresh process: its report, wall and CPU seconds."""
    out = work / "report.json"
    command = [str(QUAD_DOCTOR), "diagnose", *arguments, "--json", str(out)]
    command += ["--run-dir", str(work / "run"), "--fail-on", "never"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    report = json.loads(out.read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"report": report, "wall": wall, "cpu": cpu}


def median_run(runs: list[dict]) -> dict:
    """Per check, the engine and the process: the median over `runs`."""
    checks = [c["name"] for c in runs[0]["report"]["checks"]]
    seconds = {
        name: statistics.median(
            next(c["duration_s"] for c in r["report"]["checks"] if c["name"] == name) for r in runs
        )
        for name in checks
    }
    return {
        "checks": seconds,
        "engine": statistics.median(r["report"]["duration_s"] for r in runs),
        "wall": statistics.median(r["wall"] for r in runs),
        "cpu": statistics.median(r["cpu"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "qd-scale")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=SIZES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each run")
    parser.add_argument("--full-scan", action="store_true", help="diagnose --full-scan")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="the user setup's item delay")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run")
    parser.add_argument(
        "--workers", type=int, default=2, help="the user setup again with loader workers"
    )
    parser.add_argument("--no-user", action="store_true", help="leave out the user setup")
    parser.add_argument("--no-faults", action="store_true", help="leave out the fault table")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    extra = ["--full-scan"] if args.full_scan else []
    if args.cold and not drop_page_cache():
        raise SystemExit("--cold: cannot drop the page cache here (needs root)")
    datasets = {size: dataset(args.cache, size) for size in args.sizes}
    columns: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size, directory in datasets.items():
            runs = []
            for _ in range(args.repeats):
                if args.cold:
                    drop_page_cache()
                else:
                    warm(directory)
                runs.append(diagnose(["--set", f'data.path="{directory}"', *extra], work, env))
            columns[f"{size:,}"] = median_run(runs)
        if not args.no_user:
            user_env = {
                **env,
                "HAR_DATA": str(dataset(args.cache, 1_500)),
                "QD_DELAY_MS": str(args.delay_ms),
            }
            setup = f"{Path(__file__).resolve()}:slow_har_setup"
            for workers in sorted({0, args.workers}):
                user_env["QD_WORKERS"] = str(workers)
                runs = [
                    diagnose(["--setup", setup, *extra], work, user_env)
                    for _ in range(args.repeats)
                ]
                read_by = f", {workers} workers" if workers else ""
                columns[f"user setup, {args.delay_ms:g} ms/item{read_by}"] = median_run(runs)
    console = Console(width=120)
    console.print(cost_table(columns, args))
    if not args.no_faults:
        console.print(fault_table(datasets, env, extra))


def cost_table(columns: dict[str, dict], args: argparse.Namespace) -> Table:
    """Seconds per check (rows) for each dataset (columns)."""
    cache = "page cache dropped before each run" if args.cold else "warm page cache"
    threads = f", OMP_NUM_THREADS={args.threads}" if args.threads else ""
    table = Table(
        title=f"quad-doctor diagnose{' --full-scan' if args.full_scan else ''}: median seconds "
        f"of {args.repeats} fresh processes ({cache}{threads})"
    )
    table.add_column("check")
    for name in columns:
        table.add_column(name, justify="right")
    first = next(iter(columns.values()))
    for check in first["checks"]:
        table.add_row(check, *(f"{c['checks'].get(check, 0):.2f}" for c in columns.values()))
    for label, key in (
        ("engine (checks + verification)", "engine"),
        ("whole process, wall", "wall"),
        ("whole process, CPU", "cpu"),
    ):
        table.add_row(label, *(f"{c[key]:.2f}" for c in columns.values()))
    sizes = [n for n in columns if not n.startswith("user")]
    notes = []
    if "15,000" in columns and "150,000" in columns:
        growth = columns["150,000"]["checks"]["data-integrity"] / max(
            columns["15,000"]["checks"]["data-integrity"], 1e-9
        )
        notes.append(f"data-integrity 150,000 / 15,000: {growth:.2f}x (goal <= {GROWTH_GOAL:g}x)")
    if "150,000" in sizes:
        notes.append(
            f"whole 150,000: {columns['150,000']['wall']:.1f} s (goal <= {WHOLE_GOAL_S:g})"
        )
    user = [n for n in columns if n.startswith("user")]
    if user:
        notes.append(
            f"whole user setup: {columns[user[0]]['wall']:.1f} s (goal <= {USER_GOAL_S:g})"
        )
    table.caption = "; ".join(notes)
    return table


def fault_table(datasets: dict[int, Path], env: dict[str, str], extra: list[str]) -> Table:
    """The rank-1 finding of a whole diagnose on each planted fault at each size."""
    table = Table(title="planted faults: the rank-1 finding of a whole diagnose (warm page cache)")
    table.add_column("fault", no_wrap=True)
    table.add_column("samples", justify="right", no_wrap=True)
    table.add_column("data-integrity first", no_wrap=True)
    table.add_column("its title")
    table.add_column("its s", justify="right", no_wrap=True)
    found = total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (kind, _, _) in FAULTS.items():
            for size, healthy in datasets.items():
                directory = faulty(healthy, name)
                warm(directory)
                run = diagnose(["--set", f'data.path="{directory}"', *extra], Path(tmp), env)
                report = run["report"]
                top = report["findings"][0] if report["findings"] else None
                hit = top is not None and (top["check"], top["severity"]) == (
                    "data-integrity",
                    EXPECTED[kind],
                )
                found += hit
                total += 1
                seconds = next(c for c in report["checks"] if c["name"] == "data-integrity")
                ranked = "nothing" if top is None else f"{top['check']} {top['severity']}"
                table.add_row(
                    name,
                    f"{size:,}",
                    f"yes, {top['severity']}" if hit else f"MISSED: {ranked}",
                    top["title"].split(": each")[0] if top else "",
                    f"{seconds['duration_s']:.2f}",
                )
    table.caption = f"found at rank 1: {found}/{total}"
    return table


if __name__ == "__main__":
    main()
