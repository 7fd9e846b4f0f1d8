"""What `diagnose` costs on a user's setup whose dataset decodes every item slowly.

The example project (`examples/har_project`, its own model, loss and sampler) is diagnosed through
`quad_doctor.diagnose` twice: with its dataset as it is (memory-mapped reads) and with every item
taking `--delay-ms` longer, as a dataset that decodes video or audio per item does. Prints the
seconds per check and the items each read.

    .venv/bin/python benchmarks/user_setup_cost.py [--delay-ms 5] [--data DIR]
"""

from __future__ import annotations

import argparse
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
    """Another dataset's items, each `delay` seconds late; counts the items read."""

    def __init__(self, dataset: Dataset, delay: float) -> None:
        self.dataset = dataset
        self.delay = delay
        self.labels = dataset.labels
        self.reads = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.reads += 1
        time.sleep(self.delay)
        return self.dataset[index]


def slowed(setup: qd.TrainingSetup, delay: float) -> tuple[qd.TrainingSetup, list[SlowItems]]:
    """The setup with both loaders reading through `SlowItems`."""
    wrapped = []

    def loader(original: DataLoader) -> DataLoader:
        slow = SlowItems(original.dataset, delay)
        wrapped.append(slow)
        return DataLoader(
            slow, batch_sampler=original.batch_sampler, collate_fn=original.collate_fn
        )

    return setup.replace(
        train_loader=loader(setup.train_loader), val_loader=loader(setup.val_loader)
    ), wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=5.0)
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
    runs = {}
    for delay in (0.0, args.delay_ms / 1000):
        setup, wrapped = slowed(doctor_setup.build(), delay)
        started = time.perf_counter()
        report = qd.diagnose(setup)
        total = time.perf_counter() - started
        runs[delay] = (report, total, sum(w.reads for w in wrapped))
    for delay in runs:
        table.add_column(f"{delay * 1000:g} ms/item", justify="right")
    report = runs[0.0][0]
    for index, run in enumerate(report.checks):
        table.add_row(run.name, *(f"{runs[d][0].checks[index].duration_s:.2f}" for d in runs))
    table.add_row("whole diagnose (with verification)", *(f"{runs[d][1]:.1f}" for d in runs))
    table.add_row("items read", *(f"{runs[d][2]:,}" for d in runs))
    table.add_row("rank 1", *(runs[d][0].findings[0].finding.check for d in runs))
    Console().print(table)


if __name__ == "__main__":
    main()
