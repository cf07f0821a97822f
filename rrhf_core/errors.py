"""Errors meant for users: each message says what was wrong, where, and how to fix it.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class RRHFError(Exception):
    """Base class for errors caused by input, configuration or environment, not by a bug."""


class DataError(RRHFError):
    """A data file is missing, unreadable or breaks its contract (names the file, row and column)."""


class ConfigError(RRHFError):
    """A configuration value is invalid or inconsistent with the run's state."""


class MissingPackageError(RRHFError):
    """An optional package is needed for what was asked; the message gives the install command."""


class TrainingDivergedError(RRHFError):
    """The loss became NaN or infinite; no optimizer step was taken with it."""
