"""Progress of long evaluations: a line now and then (pytest, logs) or a tqdm bar (scripts, notebooks).

The runner opens one task per evaluation (a benchmark on one side: ``"FPB base (generate)"``) and
moves it forward after each batch. Inside a batch, a backend whose ``generate`` / ``score`` takes a
``progress`` keyword gets a callback, ``progress(done)``: how many of the prompts handed to that
call are finished; calling it again with the same number (say, once per decoding step) is a
heartbeat, so a long batch still reports.

:class:`Lines` turns that into lines on time, not on count: the first once ``FIRST`` seconds have
passed, then one every ``EVERY`` seconds, and a last one when the task is done. A quick evaluation
shows one line, a long one a line every ten seconds (done/total, rate, time left). :class:`Bar`
shows a tqdm bar instead. :func:`reporter` turns the ``Gate(progress=...)`` argument into one.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

FIRST = 5.0  # seconds before the first line
EVERY = 10.0  # seconds between lines after it

Emit = Callable[[str], None]
Clock = Callable[[], float]


class Task(Protocol):
    def update(self, done: int) -> None:
        """``done`` examples of the task's total are finished (the same number again: a heartbeat)."""


@runtime_checkable
class Reporter(Protocol):
    def task(self, label: str, total: int, done: int = 0) -> Any:
        """A context manager giving a :class:`Task`: ``total`` examples, ``done`` of them already
        (from the cache). Leaving it normally means the task is complete."""

    def note(self, line: str) -> None:
        """A line outside any task (e.g. an early-stopping look)."""


class Lines:
    """Progress as lines through ``emit``, on time (see the module docstring); ``clock`` for tests."""

    def __init__(
        self, emit: Emit, *, clock: Clock = time.monotonic, first: float | None = None, every: float | None = None
    ) -> None:
        self.emit = emit
        self.clock = clock
        self.first = FIRST if first is None else first
        self.every = EVERY if every is None else every

    @contextmanager
    def task(self, label: str, total: int, done: int = 0) -> Iterator[LineTask]:
        task = LineTask(self, label, total, done)
        yield task
        task.finish()  # not after an error: the error is the last word

    def note(self, line: str) -> None:
        self.emit(line)


class LineTask:
    def __init__(self, lines: Lines, label: str, total: int, done: int) -> None:
        self.lines = lines
        self.label = label
        self.total = total
        self.done = self.begun = done
        self.start = lines.clock()
        self.last: float | None = None  # when the last line was shown
        self.shown: int | None = None  # the count it showed

    def update(self, done: int) -> None:
        self.done = max(self.done, min(done, self.total))
        now = self.lines.clock()
        wait = self.lines.first if self.last is None else self.lines.every
        if now - (self.start if self.last is None else self.last) >= wait:
            self._show(now)

    def finish(self) -> None:
        """The last line, unless the one shown already says it all."""
        if self.shown != self.done:
            self._show(self.lines.clock())

    def _show(self, now: float) -> None:
        self.last, self.shown = now, self.done
        self.lines.emit(self.line(now))

    def line(self, now: float) -> str:
        """``FPB base (generate): 120/970 examples (2.4/s, ~6 min left)``."""
        head = f"{self.label}: {self.done}/{self.total} examples"
        elapsed = max(now - self.start, 1e-9)
        new = self.done - self.begun
        if new <= 0:
            return f"{head} ({elapsed:.0f} s, first batch running)"
        rate = new / elapsed
        left = (self.total - self.done) / rate
        return f"{head} ({rate:.1f}/s, ~{duration(left)} left)" if rate >= 0.95 else (
            f"{head} ({elapsed / new:.1f} s each, ~{duration(left)} left)"
        )


def duration(seconds: float) -> str:
    """``42 s``, ``6 min``, ``1.5 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Bar:
    """Progress as one tqdm bar per task (``tqdm.auto``: a widget in notebooks), on standard error."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self.tqdm = tqdm

    @contextmanager
    def task(self, label: str, total: int, done: int = 0) -> Iterator[BarTask]:
        bar = self.tqdm(total=total, initial=done, desc=label, unit="ex", dynamic_ncols=True, file=sys.stderr)
        try:
            yield BarTask(bar)
        finally:
            bar.close()

    def note(self, line: str) -> None:
        self.tqdm.write(line, file=sys.stderr)


class BarTask:
    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def update(self, done: int) -> None:
        self.bar.update(max(0, min(done, self.bar.total) - self.bar.n))  # 0: a heartbeat, the clock moves on


def bar_shows() -> bool:
    """Whether a tqdm bar would show: tqdm installed, and standard error a terminal or a notebook."""
    if importlib.util.find_spec("tqdm") is None:
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty()) or "ipykernel" in sys.modules


def reporter(progress: bool | Emit | Reporter | None) -> Reporter | None:
    """What ``Gate(progress=...)`` means: ``True`` (the default) a tqdm bar where one shows
    (:func:`bar_shows`), else lines on standard error; a callable gets the lines; a
    :class:`Reporter` is used as is; ``False`` or ``None``: nothing."""
    if progress is None or progress is False:
        return None
    if isinstance(progress, Reporter):
        return progress
    if progress is True:
        return Bar() if bar_shows() else Lines(_to_stderr)
    if callable(progress):
        return Lines(progress)
    raise TypeError(f"progress must be True, False, a callable taking a line, or a Reporter; got {progress!r}")


def _to_stderr(line: str) -> None:
    print(f"ftgate: {line}", file=sys.stderr, flush=True)
