"""Does the LR range test suggest a learning rate that training confirms, and does a peer?

On the embedded default config, for each seed (`train.seed`):

1. Ground truth: a grid search trains 5 epochs (1 warm-up epoch) at each of 1e-6 … 1e-1 and keeps
   the final val_accuracy; the grid's best LR is the one with the highest accuracy (all of them on
   a tie), per seed and pooled (highest mean over the seeds).
2. Our LR range test (`quad_doctor.lr_range.lr_range_test`): suggestion, verdict, steps, seconds.
3. The `torch-lr-finder` package on the same model copy, optimizer, batches (epoch 1's, without
   the batch ours holds out) and step count: its defaults (1e-7 … 10, exponential, smoothing 0.05,
   divergence at 5× the best loss) and its own suggestion, `LRFinder.plot(suggest_lr=True)` (the
   steepest gradient after skipping 10 points at the start and 5 at the end).

It reports each suggestion against the grid's best (within 3× counts as a hit) and how far the
suggestions spread over the seeds, in decades. `--quick` runs a 3-LR, 2-epoch grid to check the
wiring. torch-lr-finder is optional (`pip install -e .[bench]`); without it its columns are
skipped.

    .venv/bin/python benchmarks/lr_range.py [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from quad_doctor.context import DiagnosisContext, isolated_rng
from quad_doctor.lr_range import DEFAULT_ITERS, lr_range_test
from quad_doctor.trainer.build import autocast
from quad_doctor.trainer.config import Config, load_config
from quad_doctor.trainer.loop import Trainer

GRID_LRS = (1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 1e-2, 1e-1)
GRID_EPOCHS = 5
QUICK_LRS = (1e-4, 1e-3, 1e-2)
QUICK_EPOCHS = 2
WARMUP_EPOCHS = 1
# torch-lr-finder's documented usage: the optimizer's LR is the start, end_lr=10; it gets our
# budget of DEFAULT_ITERS (100) steps.
PEER_START_LR = 1e-7
PEER_END_LR = 10.0
HIT_FACTOR = 3.0
# The per-seed table is wide; below this many columns rich would truncate its cells.
WIDTH = 180


@dataclass(frozen=True)
class GridRun:
    """The grid for one seed: final val_accuracy per LR, and the steps one run trains."""

    accuracy: dict[float, float]
    steps_per_run: int

    @property
    def best_lrs(self) -> tuple[float, ...]:
        return best_of(self.accuracy)


def best_of(scores: dict[float, float]) -> tuple[float, ...]:
    """The LRs with the highest score: more than one on a tie (accuracy moves in 1/N steps)."""
    top = max(scores.values())
    return tuple(lr for lr, score in scores.items() if score == top)


@dataclass(frozen=True)
class Suggestion:
    """What one range test suggested, and what it cost."""

    lr: float | None
    iterations: int
    seconds: float
    verdict: str = "-"


# -- 1. the grid ---------------------------------------------------------------------------------


def final_accuracy(overrides: list[str]) -> tuple[float, int]:
    """Final val_accuracy of one training run, and the optimisation steps it took."""
    trainer = Trainer(
        load_config(overrides=overrides), console=Console(file=io.StringIO()), show_progress=False
    )
    with tempfile.TemporaryDirectory() as run_dir:
        rows = trainer.fit(run_dir)
    return float(rows[-1]["val_accuracy"]), trainer.config.train.num_epochs * len(trainer.sampler)


def grid_search(seed: int, lrs: Sequence[float], epochs: int) -> GridRun:
    """Train `epochs` epochs at each LR of `lrs` and keep the final val_accuracy."""
    accuracy: dict[float, float] = {}
    steps = 0
    for lr in lrs:
        accuracy[lr], steps = final_accuracy(
            [
                f"train.learning_rate={lr}",
                f"train.num_epochs={epochs}",
                f"train.warmup_epochs={WARMUP_EPOCHS}",
                f"train.seed={seed}",
            ]
        )
    return GridRun(accuracy, steps)


# -- 2. ours -------------------------------------------------------------------------------------


def seeded_config(seed: int) -> Config:
    return load_config(overrides=[f"train.seed={seed}"])


def ours(seed: int) -> Suggestion:
    """Our LR range test on the default config at `seed`."""
    test = lr_range_test(DiagnosisContext(seeded_config(seed)))
    return Suggestion(
        lr=test.suggested_lr,
        iterations=int(test.to_dict()["iterations"]),
        seconds=test.sweep.duration_s,
        verdict=test.verdict,
    )


# -- 3. torch-lr-finder --------------------------------------------------------------------------


def import_peer() -> ModuleType | None:
    """torch_lr_finder, imported with matplotlib's Agg backend; None if it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import torch_lr_finder
    except ImportError:
        return None
    return torch_lr_finder


class FourModalities(torch.nn.Module):
    """The model behind LRFinder's `outputs = model(inputs)`: inputs are the four modalities."""

    def __init__(self, ctx: DiagnosisContext, model: torch.nn.Module) -> None:
        super().__init__()
        self.ctx = ctx
        self.model = model

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with autocast(self.ctx.config, self.ctx.device):
            return self.model(*inputs)


def supcon_criterion(ctx: DiagnosisContext) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """LRFinder's `criterion(outputs, labels)`: the trainer's SupCon loss."""

    def criterion(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with autocast(ctx.config, ctx.device):
            return ctx.loss_fn(features, labels).loss

    return criterion


def batch_iter(peer: ModuleType, ctx: DiagnosisContext, batches: list[np.ndarray]) -> Any:
    """A `TrainDataLoaderIter` over the trainer's batches (row arrays), cycling as LRFinder does."""

    class TrainerBatches(peer.TrainDataLoaderIter):  # type: ignore[name-defined,misc]
        def inputs_labels_from_batch(
            self, rows: np.ndarray
        ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
            batch = ctx.batch(rows)
            return (batch.video, batch.audio, batch.sensor, batch.text), batch.labels

    return TrainerBatches(batches)


def peer_suggestion(finder: Any) -> float | None:
    """torch-lr-finder's own suggestion (`plot(suggest_lr=True)`); None if too few points."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots()
    try:
        _, suggested = finder.plot(ax=axes, suggest_lr=True)
    except RuntimeError:  # fewer than skip_start + skip_end + 2 points (an early divergence)
        return None
    finally:
        plt.close(figure)
    return float(suggested)


def torch_lr_finder_test(peer: ModuleType, seed: int, iters: int) -> Suggestion:
    """torch-lr-finder on the model, optimizer and batches our test uses, at its defaults."""
    started = time.perf_counter()
    ctx = DiagnosisContext(seeded_config(seed))
    model = ctx.model_copy()
    optimizer = ctx.optimizer_for(model)
    for group in optimizer.param_groups:
        group["lr"] = PEER_START_LR
    batches = ctx.epoch_batches(1)
    train = batches[1:] or batches  # ours holds the first batch out and trains on the rest
    finder = peer.LRFinder(FourModalities(ctx, model), optimizer, supcon_criterion(ctx))
    chatter = io.StringIO()  # its print()s and tqdm bar
    with (
        isolated_rng(seed, ctx.device),
        contextlib.redirect_stdout(chatter),
        contextlib.redirect_stderr(chatter),
    ):
        finder.range_test(batch_iter(peer, ctx, train), end_lr=PEER_END_LR, num_iter=iters)
        suggested = peer_suggestion(finder)
    return Suggestion(suggested, len(finder.history["lr"]), time.perf_counter() - started)


# -- report --------------------------------------------------------------------------------------


def fmt_lr(lr: float | None) -> str:
    return "-" if lr is None else f"{lr:.2g}"


def ratio(lr: float | None, best: Sequence[float]) -> float | None:
    """`lr` over the best LR nearest to it (in decades); the best LRs differ only on a tie."""
    if lr is None:
        return None
    return min((lr / b for b in best), key=lambda r: abs(math.log10(r)))


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def is_hit(lr: float | None, best: Sequence[float]) -> bool:
    value = ratio(lr, best)
    return value is not None and 1 / HIT_FACTOR <= value <= HIT_FACTOR


def fmt_best(best: Sequence[float]) -> str:
    return " = ".join(fmt_lr(lr) for lr in best)


def spread_decades(lrs: Sequence[float | None]) -> str:
    """log10(max/min) of the suggestions that exist, and how many exist."""
    found = [lr for lr in lrs if lr is not None]
    if not found:
        return f"- (0/{len(lrs)} suggested)"
    return f"{math.log10(max(found) / min(found)):.2f} ({len(found)}/{len(lrs)} suggested)"


def per_seed_table(
    seeds: Sequence[int],
    grids: dict[int, GridRun],
    our: dict[int, Suggestion],
    theirs: dict[int, Suggestion] | None,
) -> Table:
    table = Table(
        title="LR range tests against the grid's best LR (final val_accuracy); on a tie the "
        "ratio is to the nearest best"
    )
    columns = [
        "seed",
        "grid best LR (acc)",
        "ours suggestion",
        "ours/grid",
        "ours verdict",
        "ours iterations",
        "ours s",
        "torch-lr-finder suggestion",
        "its ratio",
        "its iterations",
        "its s",
    ]
    for column in columns:
        table.add_column(column)
    for seed in seeds:
        grid, mine = grids[seed], our[seed]
        best = grid.best_lrs
        peer = theirs[seed] if theirs is not None else None
        table.add_row(
            str(seed),
            f"{fmt_best(best)} ({grid.accuracy[best[0]]:.3f})",
            fmt_lr(mine.lr),
            fmt_ratio(ratio(mine.lr, best)),
            mine.verdict,
            str(mine.iterations),
            f"{mine.seconds:.1f}",
            "not installed" if peer is None else fmt_lr(peer.lr),
            "-" if peer is None else fmt_ratio(ratio(peer.lr, best)),
            "-" if peer is None else str(peer.iterations),
            "-" if peer is None else f"{peer.seconds:.1f}",
        )
    return table


def pooled_best(seeds: Sequence[int], grids: dict[int, GridRun]) -> tuple[float, ...]:
    """The LR(s) with the highest mean final val_accuracy over the seeds."""
    lrs = grids[seeds[0]].accuracy
    return best_of({lr: statistics.mean(grids[s].accuracy[lr] for s in seeds) for lr in lrs})


def summary_table(
    seeds: Sequence[int],
    grids: dict[int, GridRun],
    our: dict[int, Suggestion],
    theirs: dict[int, Suggestion] | None,
) -> Table:
    pooled = pooled_best(seeds, grids)
    table = Table(
        title=f"summary over seeds {list(seeds)}; pooled grid best LR = {fmt_best(pooled)}"
    )
    table.add_column("measure")
    table.add_column("ours")
    table.add_column("torch-lr-finder")
    tests: list[dict[int, Suggestion] | None] = [our, theirs]

    def cells(measure: Callable[[dict[int, Suggestion]], str]) -> list[str]:
        return ["not installed" if t is None else measure(t) for t in tests]

    def hits(
        reference: Callable[[int], Sequence[float]],
    ) -> Callable[[dict[int, Suggestion]], str]:
        def count(test: dict[int, Suggestion]) -> str:
            found = sum(is_hit(test[s].lr, reference(s)) for s in seeds)
            return f"{found}/{len(seeds)}"

        return count

    table.add_row(
        "spread of suggestion, decades", *cells(lambda t: spread_decades([t[s].lr for s in seeds]))
    )
    table.add_row(
        f"within {HIT_FACTOR:g}× of per-seed grid best",
        *cells(hits(lambda s: grids[s].best_lrs)),
    )
    table.add_row(f"within {HIT_FACTOR:g}× of pooled grid best", *cells(hits(lambda s: pooled)))
    table.add_row(
        "iterations per test (mean)",
        *cells(lambda t: f"{statistics.mean(t[s].iterations for s in seeds):.0f}"),
    )
    return table


def grid_table(seeds: Sequence[int], grids: dict[int, GridRun], epochs: int) -> Table:
    steps = grids[seeds[0]].steps_per_run
    lrs = list(grids[seeds[0]].accuracy)
    table = Table(
        title=(
            f"grid: final val_accuracy after {epochs} epochs ({WARMUP_EPOCHS} warm-up); "
            f"{steps} steps per run, {steps * len(lrs)} per seed; * = the seed's best"
        )
    )
    table.add_column("LR")
    for seed in seeds:
        table.add_column(f"seed {seed}")
    table.add_column("mean")
    for lr in lrs:
        accuracy = [grids[s].accuracy[lr] for s in seeds]
        marks = ["*" if lr in grids[s].best_lrs else "" for s in seeds]
        table.add_row(
            f"{lr:.0e}",
            *(f"{a:.3f}{m}" for a, m in zip(accuracy, marks, strict=True)),
            f"{statistics.mean(accuracy):.3f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="3-LR, 2-epoch grid (sanity check)")
    args = parser.parse_args()
    console = Console(width=max(Console().width, WIDTH))
    lrs, epochs = (QUICK_LRS, QUICK_EPOCHS) if args.quick else (GRID_LRS, GRID_EPOCHS)
    peer = import_peer()
    if peer is None:
        console.print(
            "[yellow]torch-lr-finder is not installed: its columns are skipped. "
            "Install it with `pip install -e .[bench]` (or `pip install torch-lr-finder`).[/]"
        )
    grids: dict[int, GridRun] = {}
    our: dict[int, Suggestion] = {}
    theirs: dict[int, Suggestion] | None = None if peer is None else {}
    for seed in args.seeds:
        started = time.perf_counter()
        grids[seed] = grid_search(seed, lrs, epochs)
        our[seed] = ours(seed)
        if peer is not None and theirs is not None:
            theirs[seed] = torch_lr_finder_test(peer, seed, DEFAULT_ITERS)
        console.print(f"seed {seed} done in {time.perf_counter() - started:.0f} s", style="dim")
    console.print(per_seed_table(args.seeds, grids, our, theirs))
    console.print(summary_table(args.seeds, grids, our, theirs))
    console.print(grid_table(args.seeds, grids, epochs))


if __name__ == "__main__":
    main()
