from __future__ import annotations

import json

import pytest
from cli_support import one_line_error, run, sets


def test_curve_suggestion_json_and_plots(tmp_path, small_overrides):
    report, svg, png = tmp_path / "lr.json", tmp_path / "lr.svg", tmp_path / "lr.png"
    code, stdout, _ = run(
        "lr-range-test",
        *sets(small_overrides),
        "--set",
        "train.num_epochs=30",
        "--iters",
        "60",
        "--json",
        str(report),
        "--plot",
        str(svg),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert code == 0, stdout
    test = json.loads(report.read_text())["lr_range_test"]
    assert test["verdict"] == "ok"
    assert 1e-5 <= test["suggested_lr"] <= 3e-2
    assert test["warmup_start_lr"] == pytest.approx(test["suggested_lr"] / 100, rel=0.05)
    assert len(test["lr"]) == len(test["loss"]) <= 60
    # the text plot and the table
    assert "•" in stdout and "S suggested" in stdout and "C configured 0.0001" in stdout
    assert f"suggested_lr     {test['suggested_lr']:.2g}" in stdout
    assert "verdict          ok for learning_rate 0.0001" in stdout
    svg_text = svg.read_text()
    assert svg_text.lstrip().startswith("<?xml") and "<svg" in svg_text
    assert "LR range test: verdict ok" in svg_text  # the title, as text in the SVG
    run_files = {path.name for path in (tmp_path / "run").iterdir()}
    assert {"report.json", "config.toml", "lr_range_test.svg"} <= run_files
    # PNG on request
    code, _, _ = run(
        "lr-range-test", *sets(small_overrides), "--iters", "20", "--plot", str(png),
        "--run-dir", str(tmp_path / "run2"), "--fail-on", "never",
    )  # fmt: skip
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_class_batches_give_not_lr_and_blame_the_sampler(tmp_path, small_overrides):
    report = tmp_path / "lr.json"
    code, stdout, _ = run(
        "lr-range-test",
        *sets(small_overrides),
        "--set",
        "train.sampler=sequential",
        "--iters",
        "40",
        "--json",
        str(report),
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert code == 1
    data = json.loads(report.read_text())
    assert data["lr_range_test"]["verdict"] == "not-lr"
    assert data["lr_range_test"]["suggested_lr"] is None
    first = data["findings"][0]
    assert first["rank"] == 1 and first["check"] == "sampler-class-mix"
    assert "lr-range-test" in [f["check"] for f in first["explained"]]
    assert all(f["check"] != "dataset-imbalance" for f in data["findings"])
    assert "none (not the LR)" in stdout and "sampler-class-mix" in stdout


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, small_overrides):
    plot = tmp_path / "curve.gif"
    code, _, stderr = run(
        "lr-range-test", *sets(small_overrides), "--plot", str(plot),
        "--json", str(tmp_path / "lr.json"), "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 2
    one_line_error(stderr, "--plot", "curve.gif", ".svg")
    assert not any(tmp_path.iterdir())

    code, _, stderr = run(
        "lr-range-test", "--start-lr", "1e-2", "--end-lr", "1e-4",
        "--run-dir", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 2
    one_line_error(stderr, "--start-lr", "--end-lr")

    code, _, stderr = run(
        "lr-range-test", "--set", "train.learnig_rate=1e-3", "--run-dir", str(tmp_path / "run")
    )
    assert code == 2
    one_line_error(stderr, "train.learnig_rate", "train.learning_rate")
    assert not any(tmp_path.iterdir())
