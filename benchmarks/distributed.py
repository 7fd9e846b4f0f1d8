"""Two processes against one on this machine, same global batch; and the live doctor under DDP.

Part 1: `quad-doctor train` on the embedded default with batch 64 in one process, against
`--nproc-per-node 2` with batch 32 per process (SupCon gathers both ranks' features, so it sees
the same 64-sample batch), for each seed: epoch time (median over epochs, training steps only)
and the final validation accuracy. On CPU both runs share the same cores: one process uses both
for its kernels, two use one each, so no speed-up is expected; the table shows what it costs.

Part 2: the live doctor's overhead under 2 processes, as benchmarks/live_overhead.py measures it
in one: the doctor (on rank 0) is switched on and off in alternate blocks of 8 steps within each
run, and each on block's mean step time is divided by the next off block's.

    .venv/bin/python benchmarks/distributed.py [--epochs 30] [--seeds 0 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from live_overhead import BLOCK, Blocks, StepClock, block_ratios  # noqa: E402

from quad_doctor.live import LiveDoctor  # noqa: E402
from quad_doctor.trainer.config import load_config, patched_config  # noqa: E402
from quad_doctor.trainer.distributed import close_world, init_world, launched_by_torchrun  # noqa: E402
from quad_doctor.trainer.loop import Trainer  # noqa: E402

OVERHEAD_EPOCHS = 10


def train_run(nproc: int, batch: int, seed: int, epochs: int) -> list[dict]:
    """One `quad-doctor train` run; its metrics rows."""
    with tempfile.TemporaryDirectory() as directory:
        command = [sys.executable, "-m", "quad_doctor.cli", "train", "--run-dir", directory]
        command += ["--nproc-per-node", str(nproc), "--no-doctor"]
        for item in (
            f"train.batch_size={batch}",
            f"train.seed={seed}",
            f"data.synthetic.seed={seed}",
            f"train.num_epochs={epochs}",
        ):
            command += ["--set", item]
        subprocess.run(command, check=True, capture_output=True)
        lines = (Path(directory) / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]


def overhead_worker(out: Path) -> None:
    """Under torchrun: one run with the doctor in blocks on rank 0; rank 0 writes the ratios."""
    config = patched_config(
        load_config(), {"train.num_epochs": OVERHEAD_EPOCHS, "dist.nproc_per_node": 2}
    )
    world = init_world(config.train.device)
    clock = StepClock()
    doctor = LiveDoctor()
    # every rank measures its own gradient every 16th step for the doctor (always on blocks)
    callbacks = [Blocks(doctor), clock] if world.is_main else [clock]
    trainer = Trainer(
        config,
        callbacks,
        console=Console(file=io.StringIO()),
        show_progress=False,
        world=world,
        watch_rank_gradients=True,
    )
    trainer.fit(out.parent / "run")  # the same directory on every rank; rank 0 writes
    if world.is_main:
        ratios, on_ms, off_ms = block_ratios(clock)
        out.write_text(
            json.dumps(
                {
                    "ratios": ratios,
                    "on_ms": on_ms,
                    "off_ms": off_ms,
                    "own_ms": 1000 * doctor.doctor_time / max(1, doctor.steps_seen),
                }
            )
        )
    close_world(world)


def overhead_run() -> dict:
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "result.json"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            __file__,
            "--worker",
            str(out),
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode:
            raise SystemExit(f"the overhead run failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])  # none: part 2 only
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None and launched_by_torchrun():
        overhead_worker(args.worker)
        return
    console = Console()
    table = Table(
        title=f"1 process (batch 64) vs 2 processes (batch 32 each, features gathered), "
        f"{args.epochs} epochs, embedded default"
    )
    for column in (
        "seed",
        "processes",
        "epoch s (median)",
        "samples/s",
        "final loss",
        "val_accuracy",
    ):
        table.add_column(column, justify="right")
    for seed in args.seeds:
        for nproc, batch in ((1, 64), (2, 32)):
            metrics = train_run(nproc, batch, seed, args.epochs)[1:]
            epoch_s = statistics.median(row["epoch_time_s"] for row in metrics)
            samples = sum(row["steps"] for row in metrics[:1]) * batch * nproc / epoch_s
            table.add_row(
                str(seed),
                str(nproc),
                f"{epoch_s:.2f}",
                f"{samples:,.0f}",
                f"{metrics[-1]['train_loss']:.4f}",
                f"{metrics[-1]['val_accuracy']:.3f}",
            )
    if args.seeds:
        console.print(table)
    overhead = Table(
        title=f"live doctor under 2 processes, on/off in blocks of {BLOCK} steps, "
        f"{OVERHEAD_EPOCHS} epochs per run"
    )
    for column in ("run", "block pairs", "off ms/step", "on ms/step", "median pair", "own"):
        overhead.add_column(column, justify="right")
    pooled = []
    for index in range(1, args.runs + 1):
        result = overhead_run()
        pooled += result["ratios"]
        overhead.add_row(
            str(index),
            str(len(result["ratios"])),
            f"{result['off_ms']:.2f}",
            f"{result['on_ms']:.2f}",
            f"{statistics.median(result['ratios']) - 1:+.2%}",
            f"{result['own_ms']:.3f} ms/step",
        )
    overhead.add_row("all", str(len(pooled)), "", "", f"{statistics.median(pooled) - 1:+.2%}", "")
    console.print(overhead)


if __name__ == "__main__":
    main()
