"""Exceptions raised by ftgate. Every message names the file or option at fault and the fix."""

from __future__ import annotations


class FtgateError(Exception):
    """Base class: something the user can fix (input, configuration, environment)."""


class ConfigError(FtgateError):
    """A bad option value, marker argument or benchmark name."""


class DataError(FtgateError):
    """Benchmark data that cannot be read: missing file, malformed row."""


class AdapterError(FtgateError):
    """An adapter that is missing, corrupt, made for another base, or without effect."""


class ModelError(FtgateError):
    """A base or candidate model that cannot be found or loaded."""


class BackendError(FtgateError):
    """A backend that is unknown, not installed, or failed while running."""


class BaselineMismatch(FtgateError):
    """A stored baseline that cannot be used: unreadable, edited, or recorded for another setup."""


class NonFiniteError(FtgateError):
    """NaN or infinite logits or log-probabilities during evaluation: the run stops, no verdict.
    ``index`` is the prompt (of those handed to the backend) that produced them, when known."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class FtgateWarning(UserWarning):
    """Not an error, but a reviewer must see it: e.g. a marker without a threshold only measures."""
