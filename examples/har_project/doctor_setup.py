"""HAR-4M as a quad-doctor training setup.

    quad-doctor diagnose --setup examples/har_project/doctor_setup.py:build
    quad-doctor diagnose --setup examples/har_project/doctor_setup.py:build_fixed

``build`` is the project as it trains (configs/base.toml, our own sampler); ``build_fixed`` is
the same run with quad-doctor's stratified batch sampler in its place.
"""

from __future__ import annotations

import sys
from pathlib import Path

import quad_doctor

PROJECT_ROOT = Path(__file__).resolve().parent
if str(PROJECT_ROOT) not in sys.path:
    # quad-doctor loads this file by path; make the project's `src` package importable.
    sys.path.insert(0, str(PROJECT_ROOT))

from src.build import SamplerFactory, Training, build_training  # noqa: E402
from src.config import load_config  # noqa: E402

CONFIG = PROJECT_ROOT / "configs" / "base.toml"


def _setup(run: Training) -> quad_doctor.TrainingSetup:
    train_cfg = run.config["train"]
    return quad_doctor.TrainingSetup(
        model=run.model,
        loss_fn=run.criterion,
        optimizer=run.optimizer,
        train_loader=run.train_loader,
        labels=run.train_set.labels,
        scheduler=run.scheduler,
        scheduler_interval="step",
        epochs=train_cfg["epochs"],
        val_loader=run.val_loader,
        class_names=run.train_set.classes,
        device=train_cfg["device"],
        seed=train_cfg["seed"],
    )


def _build(sampler: SamplerFactory | None = None) -> quad_doctor.TrainingSetup:
    return _setup(build_training(load_config(CONFIG), sampler=sampler))


def build() -> quad_doctor.TrainingSetup:
    """The run exactly as ``python -m src.train`` trains it."""
    return _build()


def build_fixed() -> quad_doctor.TrainingSetup:
    """The same run with ``quad_doctor.StratifiedBatchSampler``: every batch holds every class."""
    from quad_doctor import StratifiedBatchSampler

    return _build(
        sampler=lambda labels, batch_size, seed: StratifiedBatchSampler(
            labels, batch_size=batch_size, seed=seed
        )
    )
