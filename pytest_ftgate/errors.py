"""Exceptions raised by ftgate. Every message names the file or option at fault and the fix."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any


def keyword(setting: str) -> str:
    """How the Python API names a setting: the ``Gate`` keyword itself (``data``)."""
    return setting


class FtgateError(Exception):
    """Base class: something the user can fix (input, configuration, environment).

    ``fix`` says how, naming the settings that would fix it as fields: ``"pass {data}=DIR"``.
    ``str()`` names them as ``Gate`` keywords (``pass data=DIR``); :meth:`render` names them for
    another interface (the plugin: ``pass --ftgate-data=DIR``)."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    @property
    def settings(self) -> tuple[str, ...]:
        """The settings ``fix`` names (``("data",)``), in order."""
        fields = string.Formatter().parse(self.fix or "")
        return tuple(dict.fromkeys(name for _, name, _, _ in fields if name))

    def render(self, name: Callable[[str], str] = keyword) -> str:
        """The message and its fix, each setting named by ``name`` (a keyword by default)."""
        if not self.fix:
            return self.message
        return f"{self.message}: {self.fix.format(**{setting: name(setting) for setting in self.settings})}"

    def __str__(self) -> str:
        return self.render()

    def __reduce__(self) -> tuple[Any, ...]:  # keep ``fix`` (and subclasses' fields) through pickling
        return (type(self), (self.message,), self.__dict__)


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
