"""The HTML report: one self-contained page, every user string escaped, a chart per data set."""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys

import pytest
from cli_support import run, sets

from quad_doctor.findings import Report
from quad_doctor.reports import html

INJECTED = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def hostile_dataset(tmp_path_factory):
    """The small dataset with a class named like an injected script."""
    from quad_doctor.trainer.config import SyntheticConfig
    from quad_doctor.trainer.synthetic import write_dataset

    directory = write_dataset(SyntheticConfig(num_samples=240), tmp_path_factory.mktemp("h") / "d")
    names = json.loads((directory / "classes.json").read_text())
    names[0] = INJECTED
    (directory / "classes.json").write_text(json.dumps(names))
    return directory


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory, hostile_dataset):
    """The original failure diagnosed with --html: the page and the JSON report."""
    out = tmp_path_factory.mktemp("out")
    overrides = [
        f'data.path="{hostile_dataset}"',
        "train.batch_size=16",
        "train.sampler=sequential",
    ]
    code, _, _ = run(
        "diagnose",
        *sets(overrides),
        "--html",
        str(out / "r.html"),
        "--json",
        str(out / "r.json"),
        "--run-dir",
        str(out / "run"),
    )
    assert code == 1
    return (out / "r.html").read_text(), json.loads((out / "r.json").read_text())


def test_the_diagnose_page_holds_the_verdict_findings_and_at_least_three_charts(diagnosed):
    page, data = diagnosed
    assert "Verdict:" in page and "Root cause (sampler-class-mix)" in page
    assert page.count('<figure class="chart"') >= 3
    for chart in ("class-counts", "classes-per-batch", "batch-composition", "lr-range-test"):
        assert f'id="chart-{chart}"' in page
    assert "train.sampler = &#34;stratified&#34;" in page  # the patch, as copyable TOML
    assert "Fix verified" in page
    assert data["measurements"]["sampler_batches"]["classes_per_batch"][0] == 1


def test_the_page_is_self_contained_and_small(diagnosed):
    page, _ = diagnosed
    assert len(page.encode()) < 5_000_000
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#)""", page)  # only in-page anchors
    assert "<link" not in page and "<img" not in page and "@import" not in page
    assert not re.search(r"url\((?!#)", page)  # SVG clip paths point inside the page only
    assert page.count("<script") == 1  # ours: opens the collapsed sections for printing


def test_user_strings_are_escaped(diagnosed):
    page, _ = diagnosed
    assert INJECTED not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_saved_report_renders_the_same_page(tmp_path, diagnosed):
    _, data = diagnosed
    assert html.render(Report.from_dict(data)) == diagnosed[0]


def test_report_html_writes_beside_the_json_or_where_told(tmp_path, diagnosed):
    _, data = diagnosed
    (tmp_path / "r.json").write_text(json.dumps(data))
    code, out, _ = run("report", "--html", "--from", str(tmp_path / "r.json"))
    assert code == 0 and (tmp_path / "r.html").is_file()
    code, _, _ = run(
        "report", "--html", "--from", str(tmp_path / "r.json"), "-o", str(tmp_path / "x.html")
    )
    assert code == 0 and (tmp_path / "x.html").is_file()
    code, _, err = run("report", "--from", str(tmp_path / "r.json"), "-o", str(tmp_path / "y.html"))
    assert code == 2 and "only with --html" in err


def test_train_writes_a_report_html_with_the_training_charts(tmp_path, small_overrides):
    run_dir = tmp_path / "run"
    overrides = [*small_overrides, "train.sampler=sequential"]
    code, out, _ = run("train", *sets(overrides), "--run-dir", str(run_dir))
    assert code == 0
    page = (run_dir / "report.html").read_text()
    for chart in ("loss", "accuracy", "lr-schedule", "class-counts"):
        assert f'id="chart-{chart}"' in page
    assert "sampler-class-mix" in page and "Events" in page
    training = json.loads((run_dir / "report.json").read_text())["training"]
    last = training["steps"]["loss"][-8:]
    assert all(abs(loss - training["collapse_value"]) < 0.02 for loss in last)


def test_an_unwritable_html_path_is_one_line_and_exit_2(tmp_path, diagnosed):
    _, data = diagnosed
    (tmp_path / "r.json").write_text(json.dumps(data))
    target = tmp_path / "r.json" / "page.html"  # under a file, not a directory
    code, _, err = run("report", "--html", "--from", str(tmp_path / "r.json"), "-o", str(target))
    assert code == 2 and err.count("\n") == 1 and str(target) in err and "Traceback" not in err


def test_importing_the_renderer_leaves_matplotlib_for_the_first_chart():
    code = "import sys, quad_doctor.reports.html; print([m for m in sys.modules if 'matplot' in m])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


@pytest.mark.parametrize("enabled", [True, False], ids=["gc-on", "gc-off"])
def test_rendering_leaves_the_cycle_collector_as_it_was(diagnosed, enabled):
    _, data = diagnosed
    (gc.enable if enabled else gc.disable)()
    try:
        html.render(Report.from_dict(data))
        assert gc.isenabled() is enabled
    finally:
        gc.enable()
