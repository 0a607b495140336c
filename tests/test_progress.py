"""Progress on time, not count (issue 14): the reporter on a clock the tests move, the runner passing
the backend a callback inside a batch, the Gate's default bar, and the plugin's lines (quiet under -q)."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from pytest_ftgate import options, progress
from pytest_ftgate.backends import Model
from pytest_ftgate.benchmarks import Benchmark, Example
from pytest_ftgate.cache import PredictionCache
from pytest_ftgate.gate import Gate
from pytest_ftgate.runner import evaluate


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines_on(clock: Clock) -> tuple[progress.Lines, list[str]]:
    shown: list[str] = []
    return progress.Lines(shown.append, clock=clock), shown


def test_a_quick_task_shows_one_line_at_the_end() -> None:
    clock = Clock()
    lines, shown = lines_on(clock)
    with lines.task("FPB base (generate)", 40) as task:
        for done in (8, 16, 24, 32, 40):
            clock.now += 0.5
            task.update(done)
    assert shown == ["FPB base (generate): 40/40 examples (16.0/s, ~0 s left)"]


def test_first_line_after_five_seconds_then_every_ten() -> None:
    clock = Clock()
    lines, shown = lines_on(clock)
    counts = []  # lines shown after each second's update
    with lines.task("ConvFinQA tuned (generate)", 30) as task:
        for second in range(1, 31):
            clock.now += 1
            task.update(second)
            counts.append(len(shown))
    new_at = [second for second, (before, after) in enumerate(zip([0, *counts], counts), start=1) if after > before]
    assert new_at == [5, 15, 25]
    assert shown[0] == "ConvFinQA tuned (generate): 5/30 examples (1.0/s, ~25 s left)"
    assert shown[-1] == "ConvFinQA tuned (generate): 30/30 examples (1.0/s, ~0 s left)"
    assert len(shown) == 4


def test_a_heartbeat_inside_the_first_batch_reports_before_any_example_is_done() -> None:
    clock = Clock()
    lines, shown = lines_on(clock)
    with lines.task("MedMCQA base (generate)", 970, done=100) as task:
        clock.now += 4.9
        task.update(100)  # a decoding step: nothing finished yet
        assert shown == []
        clock.now += 0.2
        task.update(100)
        assert shown == ["MedMCQA base (generate): 100/970 examples (5 s, first batch running)"]
        clock.now += 600
        task.update(130)  # slow: seconds per example, minutes left
    assert shown[1:] == ["MedMCQA base (generate): 130/970 examples (20.2 s each, ~4.7 h left)"]


def test_no_last_line_after_an_error_and_none_repeated() -> None:
    clock = Clock()
    lines, shown = lines_on(clock)
    with pytest.raises(RuntimeError), lines.task("FPB base (generate)", 10) as task:
        task.update(3)
        raise RuntimeError("backend failed")
    assert shown == []
    with lines.task("FPB base (generate)", 10) as task:
        clock.now += 6
        task.update(10)
    assert len(shown) == 1  # the line at 6 s said 10/10 already


# --------------------------------------------------------------------------- the runner


class SteppingBackend:
    """Answers the gold word, calling ``progress(done)`` after each prompt while the clock moves
    3 s per prompt; records how many lines were out when each call returned."""

    name = "stepping"

    def __init__(self, clock: Clock, shown: list[str]) -> None:
        self.clock, self.shown = clock, shown
        self.lines_during_calls: list[int] = []

    def version(self) -> str:
        return "1"

    def load(self, model: str) -> Model:
        return Model(label=model, fingerprint=model, backend=self, handle=None)  # type: ignore[arg-type]

    def with_adapter(self, base: Model, adapter: str) -> Model:
        raise NotImplementedError

    def generate(
        self,
        model: Model,
        prompts: Sequence[Sequence[dict[str, str]]],
        *,
        max_tokens: int,
        batch_size: int | None,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        replies = []
        for done, messages in enumerate(prompts, start=1):
            self.clock.now += 3
            replies.append(messages[-1]["content"].split()[-1])
            if progress is not None:
                progress(done)
        self.lines_during_calls.append(len(self.shown))
        return replies



class SilentSteppingBackend(SteppingBackend):
    """The same, written before progress callbacks: its ``generate`` takes no ``progress``."""

    def generate(  # type: ignore[override]
        self, model: Model, prompts: Sequence[Sequence[dict[str, str]]], *, max_tokens: int, batch_size: int | None
    ) -> list[str]:
        self.clock.now += 3 * len(prompts)
        self.lines_during_calls.append(len(self.shown))
        return [messages[-1]["content"].split()[-1] for messages in prompts]


class Words(Benchmark):
    name = "words"
    title = "Words"
    kind = "label"
    choices = ("yes", "no")

    def load(self, data_dir: Any = None) -> list[Example]:
        return [Example(f"w{i}", f"say {('yes', 'no')[i % 2]}", ("yes", "no")[i % 2]) for i in range(12)]


@pytest.mark.parametrize("report", [True, False])
def test_the_runner_reports_inside_a_batch_when_the_backend_can(report: bool) -> None:
    clock = Clock()
    lines, shown = lines_on(clock)
    backend = (SteppingBackend if report else SilentSteppingBackend)(clock, shown)
    bench = Words()
    result = evaluate(
        bench,
        bench.load(),
        backend.load("m"),
        cache=PredictionCache(None),
        batch_size=12,  # one batch of 36 s
        progress=lines,
        role="base",
    )
    assert result.score == 100.0 and backend.lines_during_calls
    if report:  # lines at 6 s and 18 s and 30 s, all while the one batch ran, then the last
        assert backend.lines_during_calls == [3]
        assert shown[0] == "Words base (generate): 2/12 examples (3.0 s each, ~30 s left)"
    else:  # a backend that cannot report: the batch's end is the first news
        assert backend.lines_during_calls == [0]
    assert shown[-1] == "Words base (generate): 12/12 examples (3.0 s each, ~0 s left)"


def test_nothing_to_evaluate_shows_nothing(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTGATE_HOME", str(tmp_path / "home"))
    clock = Clock()
    lines, shown = lines_on(clock)
    backend = SteppingBackend(clock, shown)
    bench = Words()
    cache = PredictionCache(tmp_path / "cache")
    run = {"cache": cache, "batch_size": 12, "progress": lines, "role": "base"}
    evaluate(bench, bench.load(), backend.load("m"), **run)  # type: ignore[arg-type]
    shown.clear()
    evaluate(bench, bench.load(), backend.load("m"), **run)  # type: ignore[arg-type]
    assert shown == []


# --------------------------------------------------------------------------- the Gate


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_gate_progress_argument(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    backend = SteppingBackend(Clock(), [])
    gate = lambda **kw: Gate(base=str(tmp_path), backend=backend, cache=None, **kw)  # noqa: E731
    assert gate(progress=False).progress is None
    seen: list[str] = []
    assert isinstance(gate(progress=seen.append).progress, progress.Lines)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal: lines on standard error
    assert isinstance(gate().progress, progress.Lines)
    monkeypatch.setattr("sys.stderr", Terminal())
    pytest.importorskip("tqdm")
    assert isinstance(gate().progress, progress.Bar)


def test_the_default_in_a_terminal_is_a_tqdm_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    bar = progress.reporter(True)
    assert isinstance(bar, progress.Bar)
    with bar.task("FPB base (generate)", 40, done=8) as task:
        for done in (16, 24, 40):
            task.update(done)
    bar.note("FPB early stop (generate): 40/970 examples, 0 lost, 0 gained")
    text = terminal.getvalue()
    assert re.search(r"FPB base \(generate\): 100%.*40/40", text)
    assert "FPB early stop" in text


# --------------------------------------------------------------------------- the plugin

REPORTING_BACKEND = r"""

class ReportingBackend(FakeBackend):
    def generate(self, model, prompts, *, max_tokens, batch_size, progress=None):
        replies = []
        for done, messages in enumerate(prompts, start=1):
            replies += FakeBackend.generate(self, model, [messages], max_tokens=max_tokens, batch_size=batch_size)
            if progress is not None:
                progress(done)
        return replies

def pytest_ftgate_make_backend(name, config):
    return ReportingBackend() if name == "fake" else None
"""

GATE_TEST = """
import pytest

@pytest.mark.ftgate("sentiment", max_drop=2.0)
def test_no_forgetting():
    pass
"""


def test_plugin_lines_come_from_inside_the_batch_and_q_silences_them(
    gate_project: pytest.Pytester, fake_adapter: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no wait before lines, every report shows: those before 40/40 can only have come from
    inside the one batch of 40 (the runner's own report follows the batch)."""
    monkeypatch.setattr(progress, "FIRST", 0.0)
    monkeypatch.setattr(progress, "EVERY", 0.0)
    conftest = gate_project.path / "conftest.py"
    conftest.write_text(conftest.read_text() + REPORTING_BACKEND)
    gate_project.makepyfile(GATE_TEST)
    args = [fake_adapter(), options.NO_CACHE, f"{options.BATCH_SIZE}=40"]
    loud = gate_project.runpytest(*args)
    loud.assert_outcomes(passed=1)
    loud.stdout.fnmatch_lines(
        [
            "ftgate: Sentiment base (generate): 1/40 examples (*",
            "ftgate: Sentiment base (generate): 39/40 examples (*",
            "ftgate: Sentiment base (generate): 40/40 examples (*/s, ~0 s left)",
            "ftgate: Sentiment tuned (generate): 1/40 examples (*",
            "ftgate: Sentiment tuned (generate): 40/40 examples (*",
        ]
    )
    quiet = gate_project.runpytest(*args, "-q")
    quiet.assert_outcomes(passed=1)
    assert "examples (" not in quiet.stdout.str()
