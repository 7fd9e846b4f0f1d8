"""The error family every layer raises; only the CLI turns these into exit codes."""

from __future__ import annotations


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
