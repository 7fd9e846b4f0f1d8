"""Distributed training: real 2-process gloo runs under torchrun, started by `quad-doctor train`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_support import one_line_error, run, sets

from quad_doctor.trainer.distributed import World, gather_features


def train_2(tmp_path, overrides, *args):
    """`quad-doctor train --nproc-per-node 2` in a subprocess: exit code, output, run dir."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "quad_doctor.cli", "train", "--nproc-per-node", "2"]
    command += [*sets(overrides), "--run-dir", str(run_dir), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    return done.returncode, done.stdout + done.stderr, run_dir


def rows(run_dir, name):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


@pytest.fixture
def ddp_overrides(small_dataset):
    """Two processes of batch 16 on the small dataset: 6 steps per epoch each."""
    return [f'data.path="{small_dataset}"', "train.batch_size=16", "train.warmup_epochs=1"]


def test_two_processes_learn_and_rank_0_writes_one_row_per_epoch(tmp_path, ddp_overrides):
    # the LR the range test suggests for the default (6.5e-4), so 24 steps visibly learn
    overrides = [*ddp_overrides, "train.num_epochs=4", "train.learning_rate=6.5e-4"]
    code, out, run_dir = train_2(tmp_path, overrides)
    assert code == 0, out
    metrics = rows(run_dir, "metrics.jsonl")
    assert [row["epoch"] for row in metrics] == [0, 1, 2, 3, 4]
    assert all(row["steps"] == 6 for row in metrics[1:])
    # SupCon over both ranks' batches: 32 samples, collapse value ln(31)
    assert metrics[-1]["train_loss"] < math.log(31) - 0.3
    report = json.loads((run_dir / "report.json").read_text())
    assert report["context"]["config"]["dist"]["nproc_per_node"] == 2
    assert report["training"]["global_step"] == 24
    # each rank's own gradient norm, measured before DDP averaged them, every step
    norms = report["training"]["steps"]["rank_grad_norm"]
    measured = [n for n in norms if n[0] is not None]  # every 16th step: 0 and 16
    assert len(norms) == 24 and len(measured) == 2
    assert all(min(n) > 0 and n[0] != n[1] for n in measured)  # each rank's own gradient
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "report.html").is_file()
    assert out.count("done: 4 epochs") == 1  # rank 0 alone speaks


def test_the_sequential_sampler_is_named_per_rank_live_and_before_training(tmp_path, ddp_overrides):
    overrides = [*ddp_overrides, "train.sampler=sequential", "train.num_epochs=2"]
    code, out, run_dir = train_2(tmp_path, overrides)
    assert code == 0, out
    top = json.loads((run_dir / "report.json").read_text())["findings"][0]
    assert top["check"] == "sampler-class-mix" and top["title"].startswith("ranks 0, 1:")
    assert top["evidence"]["world_size"] == 2
    assert len(top["evidence"]["per_rank_single_class_batch_fraction"]) == 2
    code, _, _ = run(
        "diagnose", *sets([*overrides, "dist.nproc_per_node=2"]), "--json", str(tmp_path / "d.json")
    )
    pre = json.loads((tmp_path / "d.json").read_text())["findings"][0]
    assert code == 1 and pre["check"] == "sampler-class-mix"
    assert pre["evidence"]["ranks_with_single_class_batches"] == [0, 1]
    assert (
        pre["evidence"]["positives_per_anchor_mean_gathered"]
        > (pre["evidence"]["positives_per_anchor_mean_local"])
    )


def test_a_resume_needs_the_same_world_size(tmp_path, ddp_overrides):
    code, out, run_dir = train_2(tmp_path, [*ddp_overrides, "train.num_epochs=1"])
    assert code == 0, out
    code, _, err = run("train", "--run-dir", str(run_dir), "--resume", "--nproc-per-node", "1")
    one_line_error(err, "config.toml", "dist.nproc_per_node")
    assert code == 2


def test_more_processes_than_batches_is_one_line(small_dataset):
    code, _, err = run(
        "train",
        "--set",
        f'data.path="{small_dataset}"',
        "--set",
        "train.batch_size=64",
        "--nproc-per-node",
        "4",
    )
    assert code == 2
    one_line_error(err, "dist.nproc_per_node", "4 processes", "no data")


def _gather_worker(rank: int, store_path: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    local = torch.full((2, 3), float(rank + 1), requires_grad=True)
    everyone = gather_features(local, World(rank=rank, world_size=2))
    (everyone * torch.arange(1.0, 5.0).reshape(4, 1)).sum().backward()
    results[rank] = (everyone.detach().tolist(), local.grad.tolist())
    dist.destroy_process_group()


def test_gathered_features_hold_every_rank_and_keep_the_local_gradient(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(str(tmp_path / "store"), results), nprocs=2)
    for rank in (0, 1):
        everyone, grad = results[rank]
        assert everyone == [[1.0] * 3] * 2 + [[2.0] * 3] * 2  # rank order, on both ranks
        # only this rank's rows carry gradient: rows 2r and 2r+1 of the weights 1..4
        assert grad == [[2.0 * rank + 1] * 3, [2.0 * rank + 2] * 3]


def test_a_backend_this_machine_lacks_is_one_line(small_dataset):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run(
        "train",
        "--set",
        f'data.path="{small_dataset}"',
        "--set",
        'train.device="cuda"',
        "--nproc-per-node",
        "2",
    )
    assert code == 2
    one_line_error(err, "train.device", "CUDA")


@pytest.fixture(scope="module")
def nan_dataset(tmp_path_factory):
    from quad_doctor.trainer.config import SyntheticConfig
    from quad_doctor.trainer.synthetic import write_dataset

    config = SyntheticConfig(num_samples=240, nan_fraction=0.05)
    return write_dataset(config, tmp_path_factory.mktemp("nan") / "data")


@pytest.mark.parametrize("gather", ["true", "false"])
def test_a_nan_on_any_rank_stops_every_rank_before_the_update(tmp_path, nan_dataset, gather):
    overrides = [
        f'data.path="{nan_dataset}"',
        "train.batch_size=16",
        f"dist.gather_features={gather}",
    ]
    code, out, run_dir = train_2(tmp_path, overrides, "--stop-on", "critical")
    assert code == 1 and "stopped: critical non-finite at step 0" in out, out
    report = json.loads((run_dir / "report.json").read_text())
    top = report["findings"][0]
    assert top["check"] == "data-integrity"  # the samples that hold NaN, whichever rank had them
    assert any(key.endswith("sample_ids") for key in top["evidence"])
    non_finite = top["explained"][0]["evidence"]
    if gather == "false":
        assert non_finite["ranks_with_non_finite_loss"]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["state"]["global_step"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())


def test_a_stopped_two_process_run_resumes_with_the_same_world_size(tmp_path, ddp_overrides):
    overrides = [*ddp_overrides, "train.sampler=sequential", "train.num_epochs=2"]
    code, out, run_dir = train_2(tmp_path, overrides, "--stop-on", "critical")
    assert code == 1 and "stopped: critical sampler-class-mix" in out, out
    stopped = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert 0 < stopped["global_step"] < 12
    command = [sys.executable, "-m", "quad_doctor.cli", "train", "--run-dir", str(run_dir)]
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [row["epoch"] for row in rows(run_dir, "metrics.jsonl")] == [0, 1, 2]
    assert json.loads((run_dir / "report.json").read_text())["training"]["global_step"] == 12


def test_multi_node_settings_pass_through_to_torchrun(small_dataset):
    from quad_doctor.trainer.config import load_config
    from quad_doctor.trainer.launch import launch_command

    config = load_config(None, [f'data.path="{small_dataset}"', "train.batch_size=8"])
    command = launch_command(config, nnodes=2, rdzv_endpoint="node0:29500")
    assert command[1:3] == ["-m", "torch.distributed.run"] and "--standalone" not in command
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29500"} <= set(command)
    assert command[-2:] == ["-m", "quad_doctor.cli"]
    code, _, err = run("train", "--set", f'data.path="{small_dataset}"', "--nnodes", "2")
    assert code == 2
    one_line_error(err, "--nnodes", "--rdzv-endpoint")


def test_a_rank_whose_own_gradient_vanishes_is_named():
    from quad_doctor.rules.base import RunFacts, StepRecord
    from quad_doctor.rules.gradient_flow import GradientRule
    from quad_doctor.trainer.config import load_config

    rule = GradientRule(RunFacts(load_config(), 6, 37, 370, 0.07, ("fusion",)))
    labels = torch.arange(4).repeat(8).numpy()
    found = []
    for step in range(3):
        record = StepRecord(step, 1, 1e-4, [1e-4], 3.4, labels, labels, 4, labels * 0 + 7, 2.0, 3.4)
        record.rank_grad_norms = [2.5, 1e-7]
        found += rule.after_update(record)
    (finding,) = found
    assert finding.title.startswith("rank 1: its own gradient is 4.0e-08")
    assert finding.evidence["ranks"] == [1]
