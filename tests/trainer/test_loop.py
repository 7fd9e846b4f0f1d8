from __future__ import annotations

import io
import math

import pytest
import torch
from rich.console import Console

from quad_doctor.trainer.callbacks import Callback
from quad_doctor.trainer.config import load_config
from quad_doctor.trainer.errors import UsageError
from quad_doctor.trainer.loop import Trainer, TrainingInterrupted

COMPARED = ("epoch", "train_loss", "val_accuracy", "lr")


def make_trainer(overrides, callbacks=()):
    config = load_config(overrides=overrides)
    return Trainer(config, callbacks, console=Console(file=io.StringIO()), show_progress=False)


def comparable(rows):
    return [{key: row[key] for key in COMPARED} for row in rows]


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_train_epoch_start(self, trainer, epoch):
        self.calls.append(f"epoch_start:{epoch}")

    def on_after_backward(self, trainer, batch, output, step):
        grads = [p.grad for p in trainer.model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads)
        self.calls.append("after_backward")

    def on_train_batch_end(self, trainer, batch, features, output, step):
        self.calls.append("batch_end")

    def on_validation_end(self, trainer, epoch, val_accuracy):
        self.calls.append("validation_end")

    def on_train_epoch_end(self, trainer, epoch, metrics):
        self.calls.append(f"epoch_end:{epoch}")

    def on_fit_end(self, trainer):
        self.calls.append("fit_end")


class CrashAt(Callback):
    """Dies like a killed process would, without any chance to save."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, batch, features, output, step):
        if step == self.step:
            raise RuntimeError("killed")


class InterruptAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, batch, features, output, step):
        if step == self.step:
            raise KeyboardInterrupt


def test_training_writes_the_run_directory(tmp_path, small_overrides):
    recorder = Recorder()
    rows = make_trainer(small_overrides, [recorder]).fit(tmp_path / "run")
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert rows[0]["train_loss"] is None
    assert all(math.isfinite(row["train_loss"]) for row in rows[1:])
    assert all(0 <= row["val_accuracy"] <= 1 for row in rows)
    assert {"step_time_ms", "samples_per_s", "lr"} <= rows[1].keys()
    run = tmp_path / "run"
    assert load_config(run / "config.toml") == load_config(overrides=small_overrides)
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "state", "rng"} <= state.keys()
    steps = 192 // 16
    assert recorder.calls[:2] == ["fit_start", "epoch_start:1"]
    assert recorder.calls.count("batch_end") == recorder.calls.count("after_backward") == 2 * steps
    assert recorder.calls[-3:] == ["validation_end", "epoch_end:2", "fit_end"]


def test_a_run_directory_is_never_overwritten(tmp_path, small_overrides):
    make_trainer(small_overrides[:3] + ["train.num_epochs=1"]).fit(tmp_path)
    with pytest.raises(UsageError, match="already holds a run"):
        make_trainer(small_overrides).fit(tmp_path)


def test_crash_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, small_overrides):
    overrides = [*small_overrides, "train.checkpoint_every_steps=5"]
    reference = make_trainer(overrides).fit(tmp_path / "a")
    with pytest.raises(RuntimeError, match="killed"):
        make_trainer(overrides, [CrashAt(step=17)]).fit(tmp_path / "b")  # mid epoch 2
    resumed = make_trainer(overrides).fit(tmp_path / "b", resume=True)
    assert comparable(resumed) == comparable(reference)


def test_interrupt_saves_the_exact_position_and_resume_continues(tmp_path, small_overrides):
    reference = make_trainer(small_overrides).fit(tmp_path / "a")
    with pytest.raises(TrainingInterrupted) as info:
        make_trainer(small_overrides, [InterruptAt(step=6)]).fit(tmp_path / "b")
    saved = torch.load(info.value.checkpoint, weights_only=True)
    assert saved["state"]["epoch"] == 1 and saved["state"]["position"] == 7
    resumed = make_trainer(small_overrides).fit(tmp_path / "b", resume=True)
    assert comparable(resumed) == comparable(reference)


def test_resume_refuses_a_changed_config(tmp_path, small_overrides):
    make_trainer(small_overrides).fit(tmp_path)
    with pytest.raises(UsageError, match="config differs"):
        make_trainer([*small_overrides, "train.learning_rate=1e-3"]).fit(tmp_path, resume=True)


def test_sequential_sampler_pins_the_loss_at_ln_b_minus_1(tmp_path, small_overrides):
    # Batches of 16 on class-grouped data: every anchor's 15 others are positives.
    rows = make_trainer([*small_overrides, "train.sampler=sequential", "train.num_epochs=3"]).fit(
        tmp_path
    )
    floor = math.log(16 - 1)
    assert all(row["train_loss"] > floor - 0.06 for row in rows[1:])


def test_stratified_sampler_learns_where_sequential_cannot(tmp_path, small_overrides):
    common = [
        *small_overrides,
        "train.lr_scheduler=constant",
        "train.learning_rate=3e-4",
        "train.num_epochs=6",
    ]
    stratified = make_trainer(common).fit(tmp_path / "stratified")
    sequential = make_trainer([*common, "train.sampler=sequential"]).fit(tmp_path / "sequential")
    floor = math.log(16 - 1)
    assert stratified[-1]["train_loss"] < floor - 0.5
    assert sequential[-1]["train_loss"] > floor - 0.06
