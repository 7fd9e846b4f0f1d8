"""The live doctor in `quad-doctor train`: what it catches, when, and that it changes nothing."""

from __future__ import annotations

import json
import math
from io import StringIO

import pytest
import torch
from cli_support import run, sets
from rich.console import Console

from quad_doctor.live import EXPENSIVE_EVERY, MAX_EVERY, LiveDoctor, Monitor, _spreads
from quad_doctor.trainer.callbacks import Callback
from quad_doctor.trainer.checkpoint import load_checkpoint
from quad_doctor.trainer.config import SyntheticConfig, load_config
from quad_doctor.trainer.loop import Trainer
from quad_doctor.trainer.synthetic import write_dataset

SEVERE = ("error", "critical")


def events(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def live_report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def train(overrides, run_dir, callbacks=(), **doctor_options):
    """Train in-process with the live doctor attached; the doctor and the trainer."""
    doctor = LiveDoctor(**doctor_options)
    trainer = Trainer(load_config(None, overrides), [doctor, *callbacks], show_progress=False)
    trainer.fit(run_dir)
    return doctor, trainer


@pytest.fixture(scope="module")
def nan_dataset(tmp_path_factory):
    """The small dataset with 5 % of the samples holding NaN in the sensor stream."""
    config = SyntheticConfig(num_samples=240, nan_fraction=0.05)
    return write_dataset(config, tmp_path_factory.mktemp("nan") / "data")


def test_sequential_sampler_is_caught_within_50_steps_and_ranked_first(tmp_path, small_overrides):
    run_dir = tmp_path / "run"
    overrides = [*small_overrides, "train.sampler=sequential"]
    code, out, _ = run("train", *sets(overrides), "--run-dir", str(run_dir))
    assert code == 0
    first = events(run_dir)[0]
    assert first["step"] <= 50 and first["severity"] == "critical"
    assert first["rule"] == "sampler-class-mix" and "single class" in first["message"]
    assert {"step", "epoch", "rule", "severity", "message", "evidence"} <= first.keys()
    report = live_report(run_dir)
    assert report["schema"] == "quad-doctor/report/v1"
    top = report["findings"][0]
    assert top["check"] == "sampler-class-mix" and top["verified"] is True
    assert top["config_patch"] == {"train.sampler": "stratified"}
    assert "loss-bounds" in [f["check"] for f in top["explained"]]
    assert report["training"]["status"] == "finished"
    assert "doctor  step" in out and "sampler-class-mix" in out


def test_lr_30_is_caught_at_step_0_and_stop_on_critical_leaves_a_valid_checkpoint(
    tmp_path, small_overrides
):
    run_dir = tmp_path / "run"
    overrides = [
        *small_overrides,
        "train.learning_rate=30",
        "train.warmup_epochs=0",
        "train.num_epochs=3",
    ]
    code, out, _ = run(
        "train", *sets(overrides), "--run-dir", str(run_dir), "--stop-on", "critical"
    )
    assert code == 1 and "stopped: critical divergence at step 0" in out
    (event,) = events(run_dir)
    assert (event["step"], event["rule"], event["severity"]) == (0, "divergence", "critical")
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert checkpoint["state"]["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    assert live_report(run_dir)["training"]["status"] == "stopped"
    # the checkpoint resumes; the step-0 event is kept and not repeated
    code, _, _ = run("train", "--run-dir", str(run_dir), "--resume")
    assert code == 0
    rules = [e["rule"] for e in events(run_dir)]
    assert rules.count("divergence") == 1 and "embedding-collapse" in rules
    first, *others = live_report(run_dir)["findings"]
    assert first["check"] == "divergence" and not others  # every later symptom is nested under it
    explained = {f["check"] for f in first["explained"]}
    # which symptoms follow depends on the numerics (loss-pinned fires with 2 torch threads, not
    # always with 1); the collapsed embeddings always do
    assert "embedding-collapse" in explained
    assert explained == set(rules) - {"divergence"}


def test_nan_loss_stops_before_the_update_with_the_samples_named(tmp_path, nan_dataset):
    overrides = [f'data.path="{nan_dataset}"', "train.batch_size=16", "train.num_epochs=1"]
    doctor, trainer = train(overrides, tmp_path / "run", stop_on=_critical())
    report = doctor.report()
    top = report.findings[0]
    assert top.finding.check == "data-integrity"
    assert [f.check for f in top.explained] == ["non-finite"]
    non_finite = top.explained[0].evidence
    step = non_finite["step"]
    assert trainer.state.global_step == step  # the NaN step was not applied
    ids = [i for key, v in top.finding.evidence.items() if key.endswith("sample_ids") for i in v]
    assert ids and set(ids) <= set(non_finite["batch_sample_ids"])
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())


def _critical():
    from quad_doctor.findings import Severity

    return Severity.CRITICAL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_training_raises_nothing_at_error_or_above(tmp_path, small_overrides, seed):
    overrides = [*small_overrides, "train.num_epochs=3", f"train.seed={seed}"]
    doctor, _ = train(overrides, tmp_path / "run")
    assert [e for e in doctor.events if e["severity"] in SEVERE] == []
    assert all(e["severity"] not in SEVERE for e in events(tmp_path / "run"))
    training = live_report(tmp_path / "run")["training"]
    assert len(training["steps"]["loss"]) == training["global_step"] == 36
    assert [row["epoch"] for row in training["metrics"]] == [0, 1, 2, 3]


def test_the_doctor_changes_nothing_in_training(tmp_path, small_overrides):
    overrides = [*small_overrides, "train.sampler=sequential"]
    config = load_config(None, overrides)
    watched = Trainer(config, [LiveDoctor()], show_progress=False).fit(tmp_path / "a")
    plain = Trainer(config, show_progress=False).fit(tmp_path / "b")
    keys = ("epoch", "train_loss", "val_accuracy", "lr")
    assert [[r[k] for k in keys] for r in watched] == [[r[k] for k in keys] for r in plain]


class HalveLR(Callback):
    """Someone else's callback that overrides the schedule."""

    def on_train_batch_start(self, trainer, batch, step):
        for group in trainer.optimizer.param_groups:
            group["lr"] /= 2


def test_an_lr_other_than_the_schedule_is_reported(tmp_path, small_overrides):
    doctor, _ = train([*small_overrides, "train.num_epochs=1"], tmp_path / "run", [HalveLR()])
    (event,) = [e for e in doctor.events if e["rule"] == "lr-schedule"]
    assert event["step"] == 0 and event["severity"] == "error"
    evidence = event["evidence"]
    assert evidence["applied_lr_per_group"][0] == pytest.approx(evidence["scheduled_lr"] / 2)


def test_an_encoder_cut_off_from_the_gradient_is_named(tmp_path, small_overrides):
    config = load_config(None, [*small_overrides, "train.num_epochs=1"])
    doctor = LiveDoctor()
    trainer = Trainer(config, [doctor], show_progress=False)
    # a bug in someone's model: the audio encoding reaches the fusion scaled to nothing
    trainer.model.encoders["audio"].register_forward_hook(lambda m, i, out: out * 1e-9)
    trainer.fit(tmp_path / "run")
    found = [f for f in doctor.findings.values() if f.check == "gradient-flow"]
    (finding,) = [f for f in found if f.evidence["signal"] == "modality"]
    assert finding.title.startswith("the audio encoder gets almost no gradient")


@pytest.mark.parametrize(
    ("override", "signal"),
    [("model.fusion.l2_normalize=false", "exploding"), ("model.fusion.dim=2", "vanishing")],
)
def test_gradient_norms_out_of_range_are_reported(tmp_path, small_overrides, override, signal):
    doctor, _ = train([*small_overrides, "train.num_epochs=1", override], tmp_path / "run")
    signals = [f.evidence["signal"] for f in doctor.findings.values() if f.check == "gradient-flow"]
    assert signal in signals


def test_a_negligible_lr_shows_as_a_plateau(tmp_path, small_overrides):
    overrides = [
        *small_overrides,
        "train.learning_rate=1e-10",
        "train.min_lr=1e-11",
        "train.warmup_epochs=0",
        "train.num_epochs=9",
    ]
    doctor, _ = train(overrides, tmp_path / "run")
    (finding,) = [f for f in doctor.findings.values() if f.check == "plateau"]
    assert finding.severity.name == "WARNING" and "below what moves the weights" in finding.title


def test_the_doctor_measures_less_often_when_over_budget(tmp_path, small_overrides):
    doctor, _ = train([*small_overrides, "train.num_epochs=1"], tmp_path / "run", budget=1e-9)
    assert doctor.every > EXPENSIVE_EVERY
    overhead = live_report(tmp_path / "run")["training"]["doctor"]["overhead_fraction"]
    assert 0 < overhead < 1


def test_k_goes_straight_to_what_the_budget_needs_and_back():
    doctor = Monitor(budget=0.005)
    doctor.step_time, doctor.cheap_time = 0.040, 0.0001
    doctor._measured_cost = 0.0101  # 10 ms over the cheap part: k = 10 / (0.005 * 40) = 50
    doctor._rebudget()
    assert doctor.every == 64
    doctor._measured_cost = 0.0001  # nothing beyond the cheap part: back to the default
    doctor._rebudget()
    assert doctor.every == EXPENSIVE_EVERY
    doctor._measured_cost = 100.0
    doctor._rebudget()
    assert doctor.every == MAX_EVERY


def test_spreads_computed_together_equal_each_step_alone():
    torch.manual_seed(0)
    same = torch.ones(6, 4)
    features = [torch.randn(8, 4), None, torch.randn(8, 4), same, torch.randn(5, 4), torch.ones(3)]
    spreads = _spreads(features)
    for f, spread in zip(features, spreads, strict=True):
        if f is None or f.ndim != 2:
            assert spread is None
            continue
        z = torch.nn.functional.normalize(f, dim=1)
        assert spread == pytest.approx(1.0 - float(z.mean(0) @ z.mean(0)), abs=1e-6)
    assert spreads[3] == pytest.approx(0.0, abs=1e-6)  # every row the same way: collapsed


def test_the_status_line_is_quiet_when_healthy_and_red_when_a_rule_fires(tmp_path, small_overrides):
    buffer = StringIO()
    console = Console(file=buffer, width=120, color_system=None)
    config = load_config(None, [*small_overrides, "train.sampler=sequential"])
    doctor = LiveDoctor()
    assert doctor.progress_status(None).plain == "doctor: no findings"
    Trainer(config, [doctor], console=console).fit(tmp_path / "run")
    status = doctor.progress_status(None)
    assert status.plain.startswith("doctor: critical sampler-class-mix")
    assert "doctor: critical sampler-class-mix" in buffer.getvalue()


def test_no_doctor_trains_without_events_or_report(tmp_path, small_overrides):
    run_dir = tmp_path / "run"
    code, out, _ = run(
        "train",
        *sets([*small_overrides, "train.num_epochs=1"]),
        "--run-dir",
        str(run_dir),
        "--no-doctor",
    )
    assert code == 0 and "report in" not in out
    assert (run_dir / "metrics.jsonl").is_file()
    assert not (run_dir / "events.jsonl").exists() and not (run_dir / "report.json").exists()


def test_the_live_report_renders_with_quad_doctor_report(tmp_path, small_overrides):
    run_dir = tmp_path / "run"
    run("train", *sets([*small_overrides, "train.sampler=sequential"]), "--run-dir", str(run_dir))
    code, out, _ = run("report", "--run-dir", str(run_dir))
    assert code == 0 and "sampler-class-mix" in out and not math.isnan(len(out))
