"""Errors of quad-doctor; they live beside the trainer's config so the trainer needs no doctor."""

from __future__ import annotations

from quad_doctor.trainer.errors import (
    ConfigError,
    DatasetError,
    QuadDoctorError,
    SetupError,
    UsageError,
)

__all__ = ["ConfigError", "DatasetError", "QuadDoctorError", "SetupError", "UsageError"]
