"""The error family every layer raises; only the CLI turns these into exit codes.

Nothing heavy is imported here: the CLI catches these in every command, `--help` included.
"""

from __future__ import annotations

from pathlib import Path


class QuadDoctorError(Exception):
    """Root of all errors quad-doctor reports to the user as one line."""


class ConfigError(QuadDoctorError):
    """A config file, key or value is missing, malformed or out of range."""


class DatasetError(QuadDoctorError):
    """A dataset directory, manifest or array file is missing or malformed."""


class UsageError(QuadDoctorError):
    """A command was called with arguments that cannot work together."""


class SetupError(QuadDoctorError):
    """A user's training setup (its file, its function, or a field it returned) cannot work."""


class MissingExtraError(SetupError, ImportError):
    """An optional framework an integration needs is not installed (an ImportError too, so
    `except ImportError` guards still catch it)."""


class TrainingInterrupted(Exception):
    """Training was interrupted (Ctrl-C); a checkpoint at the exact position was saved."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"interrupted; state saved to {checkpoint} (continue with --resume)")
        self.checkpoint = checkpoint
