"""Records for the renderer tests: built from hand-made results, no model, no pytest run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_ftgate.curve import Curve, CurvePoint
from pytest_ftgate.reporting import GateRecord
from pytest_ftgate.results import Comparison, EvalResult, ModelInfo, Prediction, compare

try:  # loaded before any pytester run of this process: a run that imports numpy (adapter
    import numpy  # noqa: F401  inspection does) would otherwise unload it, and numpy's C
except ImportError:  # extension cannot be imported twice (the plot tests need it)
    pass

BASE = ModelInfo("gemma-4-e4b-it-4bit", "b" * 64)
TUNED = ModelInfo("gemma-4-e4b-it-4bit+lora", "t" * 64)

MakeRecord = Callable[..., GateRecord]


def _pair(
    benchmark: str,
    *,
    n: int,
    lost: int,
    gained: int,
    both: int,
    title: str = "",
    texts: dict[int, tuple[str, str, str, str]] | None = None,
) -> tuple[EvalResult, EvalResult]:
    """Base and tuned results: ``lost`` examples only base gets right, ``gained`` only tuned,
    ``both`` both, the rest neither. ``texts[i] = (question, gold, base_out, tuned_out)``."""
    texts = texts or {}
    base_preds, tuned_preds = [], []
    for i in range(n):
        if i < lost:
            b_ok, t_ok = True, False
        elif i < lost + gained:
            b_ok, t_ok = False, True
        elif i < lost + gained + both:
            b_ok, t_ok = True, True
        else:
            b_ok, t_ok = False, False
        question, gold, b_out, t_out = texts.get(i, (f"question {i}", "A", "A" if b_ok else "B", "A" if t_ok else "C"))
        base_preds.append(Prediction(f"{benchmark}-{i:04d}", b_out, b_out[:1] or None, gold, b_ok, question))
        tuned_preds.append(Prediction(f"{benchmark}-{i:04d}", t_out, t_out[:1] or None, gold, t_ok, question))

    def result(model: ModelInfo, preds: list[Prediction], seconds: float) -> EvalResult:
        acc = 100.0 * sum(p.correct for p in preds) / n
        return EvalResult(
            benchmark, model, n, acc, {"accuracy": acc, "unparsed_rate": 0.0}, preds, seconds, title=title
        )

    return result(BASE, base_preds, 12.5), result(TUNED, tuned_preds, 30.25)


def _comparison(
    benchmark: str = "fpb",
    *,
    n: int = 200,
    lost: int = 60,
    gained: int = 4,
    both: int = 100,
    title: str = "",
    texts: dict[int, tuple[str, str, str, str]] | None = None,
) -> Comparison:
    base, tuned = _pair(benchmark, n=n, lost=lost, gained=gained, both=both, title=title, texts=texts)
    return compare(base, tuned)


def _record(
    benchmark: str = "fpb",
    *,
    n: int = 200,
    lost: int = 60,
    gained: int = 4,
    both: int = 100,
    max_drop: float | None = 2.0,
    min_gain: float | None = None,
    strict: bool = False,
    title: str = "",
    nodeid: str | None = None,
    texts: dict[int, tuple[str, str, str, str]] | None = None,
    comparison: Comparison | None = None,
) -> GateRecord:
    if comparison is None:
        comparison = _comparison(benchmark, n=n, lost=lost, gained=gained, both=both, title=title, texts=texts)
    verdict = comparison.verdict(max_drop=max_drop, min_gain=min_gain, strict=strict)
    return GateRecord.from_comparison(
        comparison,
        verdict,
        nodeid=nodeid or f"tests/test_gate.py::test_gate[{comparison.benchmark}]",
        max_drop=max_drop,
        min_gain=min_gain,
        strict=strict,
    )


@pytest.fixture
def make_comparison() -> Callable[..., Comparison]:
    """``make_comparison("fpb", n=200, lost=60, gained=4, both=100, title="", texts=None)``: base
    and tuned paired, with that many lost, gained and both-right examples (the rest both wrong)."""
    return _comparison


@pytest.fixture
def make_record() -> MakeRecord:
    """``make_record("fpb", n=200, lost=60, gained=4, both=100, max_drop=2.0, ...)``: the record of
    ``make_comparison``'s comparison (or of ``comparison=``) under those thresholds."""
    return _record


@pytest.fixture
def records() -> list[GateRecord]:
    """The seed study's picture: MedMCQA and ConvFinQA improve, FPB forgets."""
    return [
        _record("medmcqa", title="MedMCQA", n=499, lost=40, gained=74, both=137, max_drop=2.0),
        _record(
            "fpb",
            title="FPB",
            n=970,
            lost=300,
            gained=25,
            both=464,
            max_drop=2.0,
            texts={
                0: ("Sales | rose\n12% in Q3 <b>", "positive", "positive", "neutral **really**"),
                1: ("Profit fell.", "negative", "negative", ""),
            },
        ),
        _record("convfinqa", title="ConvFinQA", n=1490, lost=20, gained=243, both=68, min_gain=5.0, max_drop=None),
    ]


@pytest.fixture
def errored() -> Callable[..., GateRecord]:
    """``errored(nodeid=...)``: the record of an FPB gate whose comparison could not be computed."""

    def make(nodeid: str = "tests/test_gate.py::test_gate[fpb]") -> GateRecord:
        return GateRecord.from_error(
            nodeid=nodeid, benchmark="fpb", title="FPB", error="adapter lora has no effect", max_drop=2.0
        )

    return make


def _curve(
    benchmark: str = "fpb",
    *,
    losses: tuple[int, ...] = (0, 2, 8, 20, 40),
    steps: tuple[int | None, ...] | None = None,
    base_right: int = 140,
    n: int = 200,
    gained: int = 2,
    title: str = "FPB",
    max_drop: float | None = 2.0,
    min_gain: float | None = None,
    strict: bool = False,
    adapters: tuple[str, ...] | None = None,
) -> Curve:
    steps = steps if steps is not None else tuple(5 * (i + 1) for i in range(len(losses)))
    points = []
    for i, (step, lost) in enumerate(zip(steps, losses, strict=True)):
        comparison = _comparison(benchmark, n=n, lost=lost, gained=gained, both=base_right - lost, title=title)
        judged = max_drop is not None or min_gain is not None
        verdict = comparison.verdict(max_drop=max_drop, min_gain=min_gain, strict=strict) if judged else None
        adapter = adapters[i] if adapters is not None else f"runs/r1/checkpoint-{step}"
        points.append(CurvePoint(step, adapter, comparison, verdict))
    return Curve(benchmark, title, "generate", max_drop, min_gain, strict, points)


@pytest.fixture
def make_curve() -> Callable[..., Curve]:
    """``make_curve("fpb", losses=(0, 2, 8, 20, 40), steps=(5, 10, ...), max_drop=2.0, ...)``: a
    forgetting curve, one checkpoint per entry of ``losses`` (examples lost at that step; the base
    gets ``base_right`` of ``n`` right at every step, each checkpoint gains ``gained``)."""
    return _curve


class FakeWriter:
    """The part of pytest's TerminalWriter that ``write_summary`` uses."""

    def __init__(self, hasmarkup: bool) -> None:
        self.hasmarkup = hasmarkup
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def line(self, s: str = "", **markup: Any) -> None:
        self.calls.append(("line", s, markup))

    def sep(self, sep: str, title: str | None = None, **markup: Any) -> None:
        self.calls.append(("sep", f"{sep} {title}", markup))

    def lines(self) -> list[str]:
        return [text for kind, text, _ in self.calls if kind == "line"]


@pytest.fixture
def writer() -> Callable[[bool], FakeWriter]:
    """``writer(hasmarkup)``: a fake terminal writer that keeps what is printed."""
    return FakeWriter
