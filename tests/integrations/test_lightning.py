"""The live doctor in PyTorch Lightning (`quad_doctor.integrations.lightning.DoctorCallback`):
what a Lightning user gets, on real (small) runs.

Run as a script, this file is the two 2-process DDP runs the distributed tests start:
`python test_lightning.py RUN_DIRS`.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

import quad_doctor  # noqa: E402
from quad_doctor.integrations.lightning import DoctorCallback  # noqa: E402
from quad_doctor.trainer.losses import SupConLoss  # noqa: E402

SEVERE = {"error", "critical"}
CLASSES, PER_CLASS, DIM = 6, 64, 24
DDP_TIMEOUT_S = 240
DEFAULT_RUN_DIR = "quad-doctor"  # under trainer.log_dir


def supcon(features, labels):
    """A user's loss: SupCon on the normalised embeddings (`SupConLoss` returns its output with
    the scalar as `.loss`; the callback reads either)."""
    return SupConLoss(0.1)(F.normalize(features, dim=1), labels)


def problem(seed: int = 0) -> TensorDataset:
    """Six gaussian classes stored class by class, as real datasets are."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    centres = torch.randn(CLASSES, DIM, generator=generator) * 2
    inputs = centres[labels] + torch.randn(len(labels), DIM, generator=generator)
    return TensorDataset(inputs, labels)


def loader(shuffled: bool, batch_size: int = 32) -> DataLoader:
    generator = torch.Generator().manual_seed(0) if shuffled else None
    return DataLoader(problem(), batch_size=batch_size, shuffle=shuffled, generator=generator)


class Embedder(pl.LightningModule):
    """A user's module: an MLP trained with SupCon, its loss kept as `self.criterion` and the
    embeddings returned beside the loss."""

    def __init__(self, fail_at_step: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 32))
        self.criterion = supcon
        self.fail_at_step = fail_at_step

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at_step:
            raise RuntimeError("the user's bug")
        inputs, labels = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
        features = self.net(inputs)
        return {"loss": self.criterion(features, labels).loss, "features": features.detach()}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class ManualEmbedder(Embedder):
    """The same module stepping its optimizer itself (Lightning's manual optimization)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        inputs, labels = batch
        features = self.net(inputs)
        loss = self.criterion(features, labels).loss
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return {"loss": loss.detach(), "embeddings": features.detach()}


def fit(
    callback,
    data: DataLoader | None,
    epochs: int,
    module: Embedder | None = None,
    ckpt_path: Path | None = None,
    **trainer_options,
) -> pl.Trainer:
    torch.manual_seed(0)
    options = {
        "logger": False,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
        **trainer_options,
    }
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], **options)
    trainer.fit(module or Embedder(), data, ckpt_path=ckpt_path)
    return trainer


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def saved_report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="module")
def sorted_run(tmp_path_factory):
    """A class-sorted loader under stop_on="critical", logged with CSVLogger, the run
    directory left to its default: the trainer and its log directory."""
    from lightning.pytorch.loggers import CSVLogger

    logs = tmp_path_factory.mktemp("logs")
    callback = DoctorCallback(stop_on="critical", quiet=True)
    trainer = fit(
        callback, loader(shuffled=False), epochs=10, logger=CSVLogger(logs), log_every_n_steps=1
    )
    return trainer, Path(trainer.log_dir)


def test_a_class_sorted_loader_is_caught_ranked_first_and_stopped_early(sorted_run):
    trainer, log_dir = sorted_run
    run_dir = log_dir / DEFAULT_RUN_DIR  # the default: beside the loggers' files
    assert trainer.global_step < 50  # of 120: the doctor stopped it
    first = events(run_dir)[0]
    assert first["step"] <= 50 and first["severity"] == "critical"
    assert first["rule"] == "sampler-class-mix" and "single class" in first["message"]
    report = saved_report(run_dir)
    assert report["schema"] == "quad-doctor/report/v1"
    assert report["training"]["status"] == "stopped"
    assert report["training"]["stop_reason"].startswith("critical sampler-class-mix at step 7")
    top = report["findings"][0]
    assert (top["check"], top["severity"]) == ("sampler-class-mix", "critical")
    assert top["evidence"]["sampler"] == "BatchSampler(SequentialSampler)"
    assert "loss-bounds" in [f["check"] for f in top["explained"]]  # the module's criterion
    assert "<svg" in (run_dir / "report.html").read_text()


def test_the_doctors_status_reaches_the_csv_logger(sorted_run):
    _, log_dir = sorted_run
    with open(log_dir / "metrics.csv", newline="") as rows:
        logged = [
            (int(row["step"]), float(row["doctor/worst_severity"]), float(row["doctor/findings"]))
            for row in csv.DictReader(rows)
            if row.get("doctor/worst_severity")
        ]
    assert logged[0] == (0, -1.0, 0.0)  # nothing found yet
    assert logged[-1][1] == 3.0 and logged[-1][2] >= 1  # critical when it stopped


def test_the_run_directory_renders_with_quad_doctor_report(sorted_run):
    _, log_dir = sorted_run
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quad_doctor.cli",
            "report",
            "--run-dir",
            str(log_dir / DEFAULT_RUN_DIR),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert done.returncode == 0, done.stderr
    assert "stopped: critical sampler-class-mix at step 7" in done.stdout
    assert "Lightning (DoctorCallback)" in done.stdout


def test_a_healthy_run_goes_to_the_end_with_nothing_at_error_or_above(tmp_path):
    trainer = fit(DoctorCallback(tmp_path, stop_on="error", quiet=True), loader(True), epochs=6)
    assert trainer.global_step == 6 * 12
    assert [e for e in events(tmp_path) if e["severity"] in SEVERE] == []
    training = saved_report(tmp_path)["training"]
    assert training["status"] == "finished" and training["global_step"] == trainer.global_step
    assert training["epoch"] == 5
    steps = training["steps"]
    above_floor = [loss - floor for loss, floor in zip(steps["loss"], steps["floor"], strict=True)]
    assert statistics.fmean(above_floor[-12:]) < statistics.fmean(above_floor[:4]) / 2  # learnt
    assert min(steps["classes"]) >= 4  # shuffled batches of 32 over 6 classes
    assert "loss-bounds" in training["doctor"]["rules"]
    assert (tmp_path / "report.html").exists()


def test_manual_optimization_is_watched_step_by_step(tmp_path):
    trainer = fit(DoctorCallback(tmp_path, quiet=True), loader(False), 2, ManualEmbedder())
    training = saved_report(tmp_path)["training"]
    assert training["global_step"] == trainer.global_step == 2 * 12
    assert training["steps"]["step"] == list(range(24))
    assert saved_report(tmp_path)["findings"][0]["check"] == "sampler-class-mix"
    assert all(0 < spread < 1 for spread in training["steps"]["spread"])  # embeddings seen


def test_an_exception_in_training_marks_the_run_interrupted(tmp_path):
    with pytest.raises(RuntimeError, match="the user's bug"):
        fit(DoctorCallback(tmp_path, quiet=True), loader(True), 1, Embedder(fail_at_step=3))
    training = saved_report(tmp_path)["training"]
    assert training["status"] == "interrupted" and training["global_step"] == 3


def test_labels_come_through_batch_fn_and_a_batch_without_them_is_named(tmp_path):
    data = DataLoader([{"x": x, "y": y} for x, y in problem()], batch_size=32)  # class-sorted
    with pytest.raises(quad_doctor.SetupError, match="a dict batch needs its labels under one of"):
        fit(DoctorCallback(tmp_path / "unsplit", quiet=True), data, epochs=1)
    assert saved_report(tmp_path / "unsplit")["training"]["status"] == "interrupted"
    split = DoctorCallback(
        tmp_path / "split", "critical", quiet=True, batch_fn=lambda b: (b["x"], b["y"])
    )
    fit(split, data, epochs=10)
    assert saved_report(tmp_path / "split")["findings"][0]["check"] == "sampler-class-mix"


def test_a_resumed_run_keeps_what_the_doctor_found_before(tmp_path):
    data = loader(shuffled=False)
    trainer = fit(DoctorCallback(tmp_path / "first", quiet=True), data, epochs=1)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")  # the callback's state travels in it
    resumed = DoctorCallback(tmp_path / "second", quiet=True)
    fit(resumed, data, epochs=2, ckpt_path=tmp_path / "epoch1.ckpt")
    training = saved_report(tmp_path / "second")["training"]
    assert training["global_step"] == 2 * 12
    first = training["events"][0]  # found before the checkpoint
    assert (first["rule"], first["step"]) == ("sampler-class-mix", 7)
    assert saved_report(tmp_path / "second")["findings"][0]["check"] == "sampler-class-mix"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"stop_on": "fatal"}, "DoctorCallback: stop_on='fatal' is not a severity; use one of"),
        ({"loss_fn": "supcon"}, "DoctorCallback: loss_fn must be callable, got str"),
        ({"batch_fn": 3}, "DoctorCallback: batch_fn must be callable, got int"),
    ],
)
def test_bad_arguments_are_one_clear_error(tmp_path, kwargs, fragment):
    with pytest.raises(quad_doctor.SetupError) as error:
        DoctorCallback(**{"run_dir": tmp_path, **kwargs})
    assert str(error.value).startswith(fragment)
    assert "\n" not in str(error.value)


def test_an_unwritable_run_dir_is_named_before_training_starts(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(quad_doctor.SetupError) as error:
        DoctorCallback(run_dir=blocker / "run")
    assert str(error.value).startswith(f"DoctorCallback: run_dir {blocker / 'run'}: cannot write")
    assert "\n" not in str(error.value)


def test_without_lightning_the_import_names_the_extra(monkeypatch):
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, "quad_doctor.integrations.lightning")
    with pytest.raises(
        quad_doctor.SetupError, match=r'pip install "quad-doctor\[lightning\]"'
    ) as error:
        importlib.import_module("quad_doctor.integrations.lightning")
    assert isinstance(error.value, ImportError)  # `except ImportError` guards catch it too


def test_pytorch_lightning_serves_when_lightning_is_absent(monkeypatch):
    import quad_doctor.integrations as integrations

    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", pl)  # the older package, same API
    monkeypatch.delitem(sys.modules, "quad_doctor.integrations.lightning")
    # the import rebinds the package's attribute: put the real module back afterwards
    monkeypatch.setattr(integrations, "lightning", integrations.lightning)
    module = importlib.import_module("quad_doctor.integrations.lightning")
    assert issubclass(module.DoctorCallback, pl.Callback)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """This file run as a script: the two distributed runs, their run directories under one
    folder, and each rank's last step per run (as the script prints them)."""
    run_dirs = tmp_path_factory.mktemp("ddp")
    done = subprocess.run(
        [sys.executable, __file__, str(run_dirs)],
        capture_output=True,
        text=True,
        timeout=DDP_TIMEOUT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    steps: dict[str, dict[int, int]] = {}
    # the two processes share one pipe: their lines may run into each other
    for kind, rank, step in re.findall(r"(sorted|shuffled): rank (\d+) step (\d+)", done.stdout):
        steps.setdefault(kind, {})[int(rank)] = int(step)
    return run_dirs, steps


def test_ddp_single_class_batches_on_every_rank_are_caught_and_every_rank_stops(ddp_runs):
    run_dirs, steps = ddp_runs
    assert sorted(steps["sorted"]) == [0, 1]
    assert steps["sorted"][0] == steps["sorted"][1] < 20  # of 120 (10 epochs of 12 steps)
    report = saved_report(run_dirs / "sorted")
    top = report["findings"][0]
    assert (top["check"], top["severity"]) == ("sampler-class-mix", "critical")
    assert top["evidence"]["world_size"] == 2
    assert top["evidence"]["ranks_with_single_class_batches"] == [0, 1]  # rank 1's, seen on 0
    assert report["training"]["status"] == "stopped"
    assert (run_dirs / "sorted" / "report.html").exists()


def test_ddp_healthy_run_finishes_on_every_rank(ddp_runs):
    run_dirs, steps = ddp_runs
    assert steps["shuffled"] == {0: 4 * 12, 1: 4 * 12}
    assert [e for e in events(run_dirs / "shuffled") if e["severity"] in SEVERE] == []
    report = saved_report(run_dirs / "shuffled")
    assert report["training"]["status"] == "finished"
    assert report["context"]["world_size"] == 2


class RankSortedEmbedder(Embedder):
    """A user's module with its own distributed loader: each rank walks its share of the
    dataset in file order, class by class (Lightning's own sampler would shuffle)."""

    def train_dataloader(self):
        data = problem()
        return DataLoader(data, batch_size=16, sampler=DistributedSampler(data, shuffle=False))


def ddp_main(run_dirs: Path) -> None:
    """Both distributed runs, one after the other in the same two CPU processes (gloo) under
    Lightning's `ddp` (each process start imports torch and Lightning: ~8 s on 2 cores),
    16 samples a batch per rank; each rank prints its last step."""
    torch.set_num_threads(1)
    callback = DoctorCallback(run_dirs / "sorted", stop_on="critical", quiet=True)
    module = RankSortedEmbedder()
    trainer = fit(
        callback, None, 10, module, strategy="ddp", devices=2, use_distributed_sampler=False
    )
    print(f"sorted: rank {trainer.global_rank} step {trainer.global_step}", flush=True)
    callback = DoctorCallback(run_dirs / "shuffled", stop_on="error", quiet=True)
    trainer = fit(callback, loader(True, batch_size=16), 4, strategy="ddp", devices=2)
    print(f"shuffled: rank {trainer.global_rank} step {trainer.global_step}", flush=True)


if __name__ == "__main__":
    ddp_main(Path(sys.argv[1]))
