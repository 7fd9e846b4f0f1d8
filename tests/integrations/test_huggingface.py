"""The live doctor in the Hugging Face `Trainer` (`integrations.huggingface.DoctorCallback`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, SequentialSampler

pytest.importorskip("transformers")
from cli_support import render_run_dir  # noqa: E402
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments  # noqa: E402

import quad_doctor  # noqa: E402
from quad_doctor.integrations.huggingface import DoctorCallback  # noqa: E402
from quad_doctor.live import JUDGE_EVERY  # noqa: E402
from quad_doctor.trainer.losses import SupConLoss  # noqa: E402

SEVERE = {"error", "critical"}
CLI_SUPPORT = Path(__file__).parents[1] / "doctor"  # where cli_support lives
RANK_STOP = r"rank (\d+) of \d+ stopped at step (\d+)"  # what each process prints at its end
CLASSES, PER_CLASS, DIM = 6, 64, 24


def supcon(features, labels):
    """SupCon on the normalised embeddings, as a scalar: the model's loss and the probe's."""
    return SupConLoss(0.1)(F.normalize(features, dim=1), labels).loss


class Gaussians(Dataset):
    """Six gaussian classes stored class by class, as real datasets are; items are dicts."""

    def __init__(self, seed: int = 0, poison: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
        centres = torch.randn(CLASSES, DIM, generator=generator) * 2
        self.x = centres[self.labels] + torch.randn(len(self.labels), DIM, generator=generator)
        if poison is not None:
            self.x[poison, 0] = float("nan")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "labels": self.labels[index]}


class Embedder(nn.Module):
    """A user's model: embeddings, and their SupCon loss when it is given labels."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 32))

    def forward(self, x, labels=None):
        embeddings = self.net(x)
        if labels is None:
            return {"embeddings": embeddings}
        return {"loss": supcon(embeddings, labels), "embeddings": embeddings}


class ClassSortedTrainer(Trainer):
    """Walks the class-sorted dataset in order: single-class batches, as sentence-transformers'
    group-by-label batch sampler once produced."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(self.train_dataset)


class SupCon(nn.Module):
    """A loss module, as sentence-transformers' losses are: (features, labels) -> loss."""

    def forward(self, features, labels):
        return supcon(features, labels)


class LabelsApartTrainer(ClassSortedTrainer):
    """A `compute_loss` that pops the labels and scores the model's embeddings itself."""

    def __init__(self, *args, loss: nn.Module, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss = loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.loss(outputs["embeddings"], labels)
        return (loss, outputs) if return_outputs else loss


def arguments(tmp_path: Path, **overrides) -> TrainingArguments:
    options = {
        "per_device_train_batch_size": 32,
        "learning_rate": 1e-3,
        "max_steps": 200,
        "seed": 0,
        **overrides,
    }
    return TrainingArguments(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        **options,
    )


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def hooks(module: nn.Module) -> int:
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A class-sorted run the doctor stops: the trainer, its model and the run directory."""
    tmp_path = tmp_path_factory.mktemp("sorted")
    run_dir = tmp_path / "doctor"
    model = Embedder()
    doctor = DoctorCallback(run_dir=run_dir, stop_on="critical", loss_fn=supcon, quiet=True)
    trainer = ClassSortedTrainer(
        model=model, args=arguments(tmp_path), train_dataset=Gaussians(), callbacks=[doctor]
    )
    trainer.train()
    return trainer, model, run_dir


def test_a_class_sorted_sampler_is_caught_ranked_first_and_training_stopped(stopped):
    trainer, model, run_dir = stopped
    first = events(run_dir)[0]
    assert first["rule"] == "sampler-class-mix" and first["severity"] == "critical"
    assert first["step"] <= 50
    # rules judge steps in groups of JUDGE_EVERY: the stop comes at most that many steps later
    assert first["step"] < trainer.state.global_step <= first["step"] + JUDGE_EVERY
    assert trainer.state.global_step < 50  # of max_steps=200
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["schema"] == "quad-doctor/report/v1"
    assert saved["training"]["status"] == "stopped"
    assert saved["training"]["stop_reason"].startswith("critical sampler-class-mix at step")
    top = saved["findings"][0]
    assert (top["rank"], top["check"], top["severity"]) == (1, "sampler-class-mix", "critical")
    assert "ln(B-1) = ln(31) = 3.4340" in top["title"]
    assert top["evidence"]["sampler"] == "BatchSampler(SequentialSampler)"
    assert "<svg" in (run_dir / "report.html").read_text()
    assert hooks(model) == 0  # the model is left as it was


def test_the_run_directory_renders_with_quad_doctor_report(stopped):
    _, _, run_dir = stopped
    done = render_run_dir(run_dir)
    assert done.returncode == 0, done.stderr
    assert "stopped: critical sampler-class-mix at step" in done.stdout
    assert "Hugging Face Trainer (DoctorCallback)" in done.stdout


def test_a_healthy_run_goes_to_the_end_with_nothing_at_error_or_above(tmp_path):
    model = Embedder()
    doctor = DoctorCallback(stop_on="error", loss_fn=supcon, quiet=True)
    trainer = Trainer(
        model=model,
        args=arguments(
            tmp_path,
            max_steps=72,
            eval_strategy="steps",
            eval_steps=24,
            per_device_eval_batch_size=64,
        ),
        train_dataset=Gaussians(),
        eval_dataset=Gaussians(seed=1),
        callbacks=[doctor],
    )
    trainer.train()
    run_dir = tmp_path / "out" / "quad-doctor"  # the default: beside the Trainer's output
    assert doctor.run_dir == run_dir and doctor.stop_reason == ""
    assert trainer.state.global_step == 72
    assert [e for e in events(run_dir) if e["severity"] in SEVERE] == []
    saved = json.loads((run_dir / "report.json").read_text())
    training = saved["training"]
    assert training["status"] == "finished" and training["global_step"] == 72
    assert training["doctor"]["steps_seen"] == 72
    steps = training["steps"]
    assert steps["loss"][-1] < steps["loss"][0] - 0.2  # it learnt, and the doctor saw it
    # shuffled batches of 32 over 6 classes; the evaluation's class-sorted ones are not training's
    assert min(steps["classes"]) >= 4
    assert (run_dir / "report.html").is_file()
    assert hooks(model) == 0


def test_watching_changes_nothing_in_training(tmp_path):
    def weights(callbacks):
        model = Embedder()
        Trainer(
            model=model,
            args=arguments(tmp_path, max_steps=24),
            train_dataset=Gaussians(),
            callbacks=callbacks,
        ).train()
        return [p.detach().clone() for p in model.parameters()], torch.rand(3)

    plain, plain_rng = weights([])
    watched, watched_rng = weights([DoctorCallback(run_dir=tmp_path / "doctor", quiet=True)])
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    assert torch.equal(plain_rng, watched_rng)


def ddp_worker(directory: str) -> None:
    """One process of a two-process DDP run on a class-sorted sampler (run under torchrun)."""
    tmp_path = Path(directory)
    model = Embedder()
    doctor = DoctorCallback(run_dir=tmp_path / "doctor", stop_on="critical", quiet=True)
    trainer = ClassSortedTrainer(
        model=model,
        args=arguments(tmp_path, per_device_train_batch_size=16, ddp_backend="gloo"),
        train_dataset=Gaussians(),
        callbacks=[doctor],
    )
    trainer.train()
    rank, step = trainer.args.process_index, trainer.state.global_step
    print(f"rank {rank} of {trainer.args.world_size} stopped at step {step}", flush=True)
    # leave together: a process that exits while the other's gloo connection is still open can
    # make that one abort at exit (rank 0 got SIGABRT once, in a fresh-clone run of this suite)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_every_process_stops_at_the_step_the_main_ones_doctor_stops_at(tmp_path):
    """Only the main process watches; a process that trained on alone would wait forever for
    the others at its next gradient reduction."""
    code = (
        f"import sys; sys.path[:0] = {[str(Path(__file__).parent), str(CLI_SUPPORT)]!r}; "
        f"import test_huggingface; test_huggingface.ddp_worker({str(tmp_path)!r})"
    )
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + ["--no-python", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # two processes on two cores
    )
    assert done.returncode == 0, done.stderr[-6000:]  # the worker's own error precedes torchrun's
    # the two processes share one pipe: their lines may run into each other
    stops = {int(rank): int(step) for rank, step in re.findall(RANK_STOP, done.stdout)}
    assert sorted(stops) == [0, 1] and stops[0] == stops[1], done.stdout
    assert stops[0] < 50
    saved = json.loads((tmp_path / "doctor" / "report.json").read_text())
    assert saved["training"]["status"] == "stopped"
    assert saved["findings"][0]["check"] == "sampler-class-mix"


def test_labels_that_never_reach_the_model_fail_at_the_first_step_and_leave_no_hook(tmp_path):
    model = Embedder()
    trainer = LabelsApartTrainer(
        model=model,
        args=arguments(tmp_path),
        train_dataset=Gaussians(),
        loss=SupCon(),
        callbacks=[DoctorCallback(run_dir=tmp_path / "doctor", quiet=True)],
    )
    with pytest.raises(quad_doctor.SetupError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith("DoctorCallback: Embedder.forward got no 'labels' (it got x)")
    assert "loss_module=" in message and "\n" not in message
    assert trainer.state.global_step == 0 and hooks(model) == 0


def test_a_loss_module_shows_the_labels_over_accumulated_micro_batches(tmp_path):
    """sentence-transformers' way: the loss module gets the labels, the model never does."""
    model, loss = Embedder(), SupCon()
    doctor = DoctorCallback(
        run_dir=tmp_path / "doctor",
        stop_on="critical",
        loss_fn=supcon,
        loss_module=loss,
        outputs_key="features",
        quiet=True,
    )
    trainer = LabelsApartTrainer(
        model=model,
        args=arguments(tmp_path, per_device_train_batch_size=16, gradient_accumulation_steps=2),
        train_dataset=Gaussians(),
        loss=loss,
        callbacks=[doctor],
    )
    trainer.train()
    assert trainer.state.global_step < 50
    report = doctor.monitor.report()
    top = report.findings[0].finding
    assert (top.check, str(top.severity)) == ("sampler-class-mix", "critical")
    assert top.evidence["batch_size"] == 16  # the micro-batch SupCon scored
    assert "ln(B-1) = ln(15)" in top.title
    assert "loss-bounds" in [f.check for f in report.findings[0].explained]
    assert report.context["labels_from"] == "SupCon.forward(labels=)"
    assert hooks(loss) == 0 and hooks(model) == 0


def test_a_nan_input_in_an_accumulated_micro_batch_stops_training_with_the_sample_named(
    tmp_path,
):
    doctor = DoctorCallback(run_dir=tmp_path / "doctor", stop_on="critical", quiet=True)
    trainer = ClassSortedTrainer(
        model=Embedder(),
        args=arguments(tmp_path, per_device_train_batch_size=16, gradient_accumulation_steps=2),
        train_dataset=Gaussians(poison=50),  # step 1's second micro-batch (rows 48-63), row 2
        callbacks=[doctor],
    )
    trainer.train()
    assert trainer.state.global_step == 2  # the Trainer applies the step it is in, then stops
    top = doctor.monitor.report().findings[0]
    assert (top.finding.check, str(top.finding.severity)) == ("data-integrity", "critical")
    assert top.finding.evidence == {"step": 1, "x_sample_ids": ["1:2"]}
    assert [(f.check, f.evidence["step"]) for f in top.explained] == [("non-finite", 1)]


def test_a_gradient_overflow_the_fp16_scaler_skips_is_not_a_finding(tmp_path):
    """Under an fp16 GradScaler an overflowing step is skipped, not a fault (no fp16 Trainer on
    CPU: the callback is driven as the Trainer drives it)."""
    model = Embedder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.scaler = torch.amp.GradScaler("cpu")  # what accelerate's optimizer carries
    doctor = DoctorCallback(run_dir=tmp_path, stop_on="critical", quiet=True)
    args, state, control = arguments(tmp_path, max_steps=2), TrainerState(), TrainerControl()
    state.max_steps, state.num_train_epochs = 2, 1
    doctor.on_train_begin(args, state, control, model=model, optimizer=optimizer)
    batch = Gaussians()[0:32]
    for step in range(2):
        state.global_step = step
        model(**batch)["loss"].backward()
        if step == 0:
            model.net[0].weight.grad[0, 0] = float("inf")
        doctor.on_pre_optimizer_step(args, state, control, model=model, optimizer=optimizer)
        state.global_step += 1
        doctor.on_step_end(args, state, control)
        model.zero_grad()
    doctor.on_train_end(args, state, control)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [f["check"] for f in saved["findings"] if f["check"] == "non-finite"] == []
    assert saved["measurements"]["fp16_overflow_steps_skipped"] == 1
    assert not control.should_training_stop and hooks(model) == 0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (
            {"stop_on": "fatal"},
            "DoctorCallback: stop_on='fatal' is not a severity; use one of critical",
        ),
        ({"loss_fn": "supcon"}, "DoctorCallback: loss_fn must be callable, got str"),
        ({"labels_key": ""}, "DoctorCallback: labels_key must be an argument name, got ''"),
        ({"loss_module": "supcon"}, "DoctorCallback: loss_module must be a torch.nn.Module"),
    ],
)
def test_bad_arguments_are_one_clear_error(tmp_path, kwargs, fragment):
    with pytest.raises(quad_doctor.SetupError) as error:
        DoctorCallback(**{"run_dir": tmp_path, **kwargs})
    assert str(error.value).startswith(fragment)
    assert "\n" not in str(error.value)


def test_an_unwritable_run_dir_is_named_when_the_callback_is_made(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(
        quad_doctor.SetupError, match=r"^DoctorCallback: run_dir .*a-file/run: cannot write"
    ):
        DoctorCallback(run_dir=blocker / "run")
