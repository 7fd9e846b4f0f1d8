"""What `diagnose` costs on a user's setup whose dataset decodes every item slowly.

The example project (`examples/har_project`, its own model, loss and sampler) is diagnosed through
`quad_doctor.diagnose`: with its dataset as it is (memory-mapped reads) and with every item
taking `--delay-ms` longer, as a dataset that decodes video or audio per item does, read as the
example reads it (in the main process) and through `--workers` loader worker processes. Prints the
seconds per check and the items each read.

    .venv/bin/python benchmarks/user_setup_cost.py [--delay-ms 5] [--workers 2] [--data DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

import quad_doctor as qd
from quad_doctor.trainer.config import SyntheticConfig
from quad_doctor.trainer.synthetic import write_dataset

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "har_project"


class SlowItems(Dataset):
    """Another dataset's items, each `delay` seconds late; counts the items read, in loader
    worker processes too."""

    def __init__(self, dataset: Dataset, delay: float) -> None:
        self.dataset = dataset
        self.delay = delay
        self.labels = dataset.labels
        self.count = multiprocessing.Value("l", 0)

    @property
    def reads(self) -> int:
        return self.count.value

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with self.count.get_lock():
            self.count.value += 1
        time.sleep(self.delay)
        return self.dataset[index]


def slowed(
    setup: qd.TrainingSetup, delay: float, workers: int = 0
) -> tuple[qd.TrainingSetup, list[SlowItems]]:
    """The setup with both loaders reading through `SlowItems`, with `workers` processes each."""
    wrapped = []

    def loader(original: DataLoader) -> DataLoader:
        slow = SlowItems(original.dataset, delay)
        wrapped.append(slow)
        return DataLoader(
            slow,
            batch_sampler=original.batch_sampler,
            collate_fn=original.collate_fn,
            num_workers=workers,
        )

    return setup.replace(
        train_loader=loader(setup.train_loader), val_loader=loader(setup.val_loader)
    ), wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument(
        "--workers", type=int, default=2, help="also with this many loader workers (0: not)"
    )
    parser.add_argument("--data", type=Path, default=None, help="dataset dir (default: generated)")
    args = parser.parse_args()
    data = args.data or write_dataset(
        SyntheticConfig(), Path(tempfile.mkdtemp(prefix="qd-bench-")) / "data"
    )
    os.environ["HAR_DATA"] = str(data)
    sys.path.insert(0, str(EXAMPLE))
    import doctor_setup

    table = Table(title="diagnose on examples/har_project (batch 32), seconds per check")
    table.add_column("check")
    delay = args.delay_ms / 1000
    runs = {}
    for name, seconds, workers in (
        ("0 ms/item", 0.0, 0),
        (f"{args.delay_ms:g} ms/item", delay, 0),
        *(
            [(f"{args.delay_ms:g} ms/item, {args.workers} workers", delay, args.workers)]
            if args.workers
            else []
        ),
    ):
        setup, wrapped = slowed(doctor_setup.build(), seconds, workers)
        started = time.perf_counter()
        report = qd.diagnose(setup)
        total = time.perf_counter() - started
        runs[name] = (report, total, sum(w.reads for w in wrapped))
        table.add_column(name, justify="right")
    first = next(iter(runs.values()))[0]
    for index, run in enumerate(first.checks):
        table.add_row(run.name, *(f"{r[0].checks[index].duration_s:.2f}" for r in runs.values()))
    table.add_row("whole diagnose (with verification)", *(f"{r[1]:.1f}" for r in runs.values()))
    table.add_row("items read", *(f"{r[2]:,}" for r in runs.values()))
    table.add_row("rank 1", *(r[0].findings[0].finding.check for r in runs.values()))
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
