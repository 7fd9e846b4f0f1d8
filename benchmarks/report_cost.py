"""What the HTML report adds to a command: importing its renderer, then rendering the page.

A training report (1 epoch on 240 samples, the live doctor on) and a diagnose report (the
embedded default config, 240 samples) are made once and saved as JSON. Each repeat then loads
one in a fresh Python process that has already imported what `quad-doctor train` and `diagnose`
hold before they write the page (`quad_doctor.cli`: torch, numpy, rich, the trainer, the doctor),
and times `import quad_doctor.reports.html`, the first `render(report)` (which imports matplotlib
and draws every chart) and a second one. Medians of the repeats. Goals: the import ≤ 0.15 s, the
training report's first render ≤ 0.4 s.

    .venv/bin/python benchmarks/report_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

GOAL_IMPORT_S = 0.15
GOAL_RENDER_S = 0.4
SAMPLES = 240


def make_reports(directory: Path) -> dict[str, Path]:
    """A training report and a diagnose report, saved as JSON under `directory`."""
    from quad_doctor.context import DiagnosisContext
    from quad_doctor.engine import diagnose
    from quad_doctor.live import LiveDoctor
    from quad_doctor.trainer.config import load_config, patched_config
    from quad_doctor.trainer.loop import Trainer

    config = patched_config(load_config(), {"data.synthetic.num_samples": SAMPLES})
    doctor = LiveDoctor()
    trainer = Trainer(
        patched_config(config, {"train.num_epochs": 1}),
        callbacks=[doctor],
        console=Console(file=io.StringIO()),
        show_progress=False,
    )
    trainer.fit(directory / "run")
    paths = {"training (1 epoch)": directory / "training.json", "diagnose": directory / "d.json"}
    doctor.report().save_json(paths["training (1 epoch)"])
    diagnose(config, ctx=DiagnosisContext(config)).save_json(paths["diagnose"])
    return paths


def measure(report_path: Path) -> dict[str, float]:
    """In this process: seconds to import the HTML renderer and to render `report_path` twice."""
    import quad_doctor.cli  # noqa: F401  (what the commands hold before they render)
    from quad_doctor.findings import Report

    report = Report.from_dict(json.loads(report_path.read_text()))
    started = time.perf_counter()
    from quad_doctor.reports import html

    seconds = {"import": time.perf_counter() - started}
    for render in ("first render", "second render"):
        started = time.perf_counter()
        html.render(report)
        seconds[render] = time.perf_counter() - started
    return seconds


def measure_in_fresh_process(report_path: Path) -> dict[str, float]:
    """`measure` in a new Python process, so the import is not already done."""
    command = [sys.executable, __file__, "--measure", str(report_path)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    table = Table(title=f"HTML report cost, seconds (median of {args.repeats} fresh processes)")
    for column in ("report", "import", "first render", "second render", "import + first"):
        table.add_column(column, justify="left" if column == "report" else "right")
    with tempfile.TemporaryDirectory(prefix="qd-bench-") as directory:
        for name, path in make_reports(Path(directory)).items():
            runs = [measure_in_fresh_process(path) for _ in range(args.repeats)]
            median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            total = statistics.median(run["import"] + run["first render"] for run in runs)
            table.add_row(
                name,
                *(f"{median[key]:.3f}" for key in ("import", "first render", "second render")),
                f"{total:.3f}",
            )
    Console().print(table)
    Console().print(
        f"goals: import ≤ {GOAL_IMPORT_S} s, the training report's first render ≤ {GOAL_RENDER_S} s"
    )


if __name__ == "__main__":
    main()
