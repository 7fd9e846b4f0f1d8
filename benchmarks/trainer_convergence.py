"""Does the trainer learn when it should, and fail exactly like the original project when it should?

1. The healthy default (30 epochs) over several seeds: val_accuracy at epoch 0 and at the end, and
   the final train loss against ln(B-1).
2. The original failure: sequential versus stratified sampler at lr 1e-4 and 1e-6, 3 epochs with 1
   warm-up epoch, final train loss against ln(31) = 3.4340.

    .venv/bin/python benchmarks/trainer_convergence.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import io
import math
import tempfile
import time

from rich.console import Console
from rich.table import Table

from quad_doctor.trainer.config import load_config
from quad_doctor.trainer.loop import Trainer


def train(overrides: list[str]) -> tuple[list[dict], float]:
    """Metrics rows of one run and its wall time."""
    trainer = Trainer(
        load_config(overrides=overrides), console=Console(file=io.StringIO()), show_progress=False
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        rows = trainer.fit(run_dir)
    return rows, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    console = Console()
    collapse = math.log(32 - 1)

    healthy = Table(title="healthy default, 30 epochs (seed = train.seed and data.synthetic.seed)")
    for column in ("seed", "val_acc epoch 0", "val_acc final", "final loss", "ln(31) - loss", "s"):
        healthy.add_column(column)
    for seed in args.seeds:
        rows, seconds = train([f"train.seed={seed}", f"data.synthetic.seed={seed}"])
        final = rows[-1]
        healthy.add_row(
            str(seed),
            f"{rows[0]['val_accuracy']:.3f}",
            f"{final['val_accuracy']:.3f}",
            f"{final['train_loss']:.4f}",
            f"{collapse - final['train_loss']:.3f}",
            f"{seconds:.0f}",
        )
    console.print(healthy)

    failure = Table(title="the original failure: 3 epochs, 1 warm-up epoch; ln(31) = 3.4340")
    for column in ("sampler", "lr", "loss per epoch", "final - ln(31)", "val_acc final"):
        failure.add_column(column)
    for lr in ("1e-4", "1e-6"):
        for sampler in ("sequential", "stratified"):
            rows, _ = train(
                [
                    f"train.sampler={sampler}",
                    f"train.learning_rate={lr}",
                    "train.num_epochs=3",
                    "train.warmup_epochs=1",
                ]
            )
            losses = [row["train_loss"] for row in rows[1:]]
            failure.add_row(
                sampler,
                lr,
                " ".join(f"{loss:.4f}" for loss in losses),
                f"{losses[-1] - collapse:+.4f}",
                f"{rows[-1]['val_accuracy']:.3f}",
            )
    console.print(failure)


if __name__ == "__main__":
    main()
