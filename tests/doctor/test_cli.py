from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import one_line_error, run, runner

from quad_doctor.cli import app


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--config", "missing.toml"], ["missing.toml", "config file not found"]),
        (["--set", "train.batchsize=3"], ["did you mean 'train.batch_size'"]),
        (["--set", "train.batch_size=1"], ["train.batch_size must be >= 2"]),
        (["--set", "train.learning_rate=-1"], ["train.learning_rate must be > 0"]),
        (["--set", "train.sampler=shuffle"], ["train.sampler must be one of"]),
        (["--set", "data.path='/nonexistent/data'"], ["/nonexistent/data"]),
    ],
)
def test_train_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, fragments):
    code, _, stderr = run("train", "--run-dir", str(tmp_path / "run"), *args)
    assert code == 2
    one_line_error(stderr, *fragments)
    assert not (tmp_path / "run").exists()


def test_invalid_toml_names_the_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[train]\nbatch_size = = 3\n")
    code, _, stderr = run("train", "--config", str(config), "--run-dir", str(tmp_path / "r"))
    assert code == 2
    one_line_error(stderr, str(config), "not valid TOML")


def test_a_broken_dataset_is_reported_before_anything_is_written(tmp_path, truncated_dataset):
    code, _, stderr = run(
        "train", "--set", f'data.path="{truncated_dataset}"', "--run-dir", str(tmp_path / "run")
    )
    assert code == 2
    one_line_error(stderr, "sensor.npy")
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["train", "--set", "train.batch_size=1", "--debug"])
    assert result.exit_code != 0 and result.exception is not None


def test_make_dataset_writes_and_refuses_to_overwrite(tmp_path):
    target = tmp_path / "d"
    code, stdout, _ = run("make-dataset", str(target), "--set", "data.synthetic.num_samples=60")
    assert code == 0 and "wrote 60 samples" in stdout
    assert sorted(p.name for p in target.iterdir()) == [
        "audio.npy",
        "classes.json",
        "manifest.csv",
        "sensor.npy",
        "text.npy",
        "video.npy",
    ]
    code, _, stderr = run("make-dataset", str(target))
    assert code == 2
    one_line_error(stderr, str(target), "--force")
    code, _, _ = run(
        "make-dataset", str(target), "--force", "--set", "data.synthetic.num_samples=30"
    )
    assert code == 0
    assert len((target / "manifest.csv").read_text().splitlines()) == 31


def test_resume_without_a_run_is_a_usage_error(tmp_path):
    code, _, stderr = run("train", "--resume", "--run-dir", str(tmp_path / "none"))
    assert code == 2
    one_line_error(stderr, "--resume")


def test_installed_console_script_trains_into_runs_latest(tmp_path, small_overrides):
    script = Path(sys.executable).with_name("quad-doctor")
    sets = [arg for override in small_overrides for arg in ("--set", override)]
    command = [str(script), "train", *sets, "--set", "train.num_epochs=1"]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr
    latest = tmp_path / "runs" / "latest"
    rows = [json.loads(line) for line in (latest / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1]
    assert (latest / "config.toml").is_file()
    assert (latest / "checkpoints" / "last.pt").is_file()
    assert "val_accuracy" in result.stdout
    # Resuming the finished run from runs/latest trains nothing more and keeps its metrics.
    again = subprocess.run(
        [str(script), "train", "--resume"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert len((latest / "metrics.jsonl").read_text().splitlines()) == 2
