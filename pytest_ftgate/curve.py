"""The forgetting curve: one benchmark's paired comparison against the base at each checkpoint.

A ``Curve`` holds, per training step, the comparison of the base (or a reference) with that
checkpoint and the gate's verdict there. It is plain data that travels from an xdist worker to the
controller and into the JSON report (``to_dict`` / ``from_dict``), so every point keeps its numbers
(``PointNumbers``) whether or not the full ``Comparison`` (with per-example predictions) is at hand:
a point built from a comparison derives them, a point read back from a dict has only them.

A curve read from a dict is input, not truth: the JSON report feeds CI promotion scripts. It is
validated as strictly as one built in memory (finite numbers in range, an interval that contains
nothing impossible, steps in increasing order, known verdicts); anything else is a ``ConfigError``
naming the point and the field, never a curve rendered as a pass.

Numbers are percentage points (0-100), tuned minus base, like the rest of the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_ftgate.errors import ConfigError
from pytest_ftgate.results import Verdict

if TYPE_CHECKING:
    from pytest_ftgate.results import Comparison

_VERDICTS = ("pass", "fail", "inconclusive", "measured")
_SLACK = 1e-6  # rounding allowed between a stored delta and tuned - base (points)


@dataclass(frozen=True)
class PointNumbers:
    """What the reports show of one comparison: scores, delta, paired interval, flips."""

    base: float
    tuned: float
    delta: float
    ci: tuple[float, float]
    confidence: float
    p_value: float
    n: int
    lost: int
    gained: int

    @classmethod
    def from_comparison(cls, comparison: Comparison) -> PointNumbers:
        """The comparison's numbers. A comparison that stopped early (``comparison.early``) gives
        its anytime-valid interval: the fixed-sample interval of a sample whose size was chosen by
        looking at the data would prove drops that are not there."""
        low, high = comparison.ci if comparison.early is None else comparison.early.interval
        return cls(
            base=float(comparison.base.score),
            tuned=float(comparison.tuned.score),
            delta=float(comparison.delta),
            ci=(float(low), float(high)),
            confidence=float(comparison.confidence),
            p_value=float(comparison.p_value),
            n=int(comparison.n),
            lost=len(comparison.lost),
            gained=len(comparison.gained),
        )

    def problems(self) -> list[str]:
        """What is impossible about these numbers (empty: nothing)."""
        found = []
        for name in ("base", "tuned", "delta", "confidence", "p_value"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                found.append(f"{name} is {value!r}, not a finite number")
        low, high = self.ci
        if not all(_is_number(v) and math.isfinite(v) for v in (low, high)):
            found.append(f"ci is {[low, high]!r}, not two finite numbers")
        if found:
            return found
        for name in ("base", "tuned"):
            if not 0.0 <= getattr(self, name) <= 100.0:
                found.append(f"{name} score {getattr(self, name)!r} is outside 0-100 points")
        if abs(self.delta - (self.tuned - self.base)) > _SLACK * max(1.0, abs(self.delta)):
            found.append(f"delta {self.delta!r} is not tuned - base ({self.tuned!r} - {self.base!r})")
        if not -100.0 <= low <= high <= 100.0:
            found.append(f"ci {[low, high]!r} is not an interval within -100..100 points")
        if not 0.0 < self.confidence < 1.0:
            found.append(f"confidence {self.confidence!r} is not between 0 and 1")
        if not 0.0 <= self.p_value <= 1.0:
            found.append(f"p_value {self.p_value!r} is not between 0 and 1")
        counts = (self.n, self.lost, self.gained)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            found.append(f"n, lost, gained {list(counts)!r} are not counts")
        elif self.lost + self.gained > self.n:
            found.append(f"lost + gained ({self.lost} + {self.gained}) exceeds n ({self.n})")
        return found


@dataclass(frozen=True)
class CurvePoint:
    """One checkpoint: its step (None when unknown), its adapter path as shown, the comparison of
    the base with it, and the gate's verdict there (None when the point was only measured).

    ``numbers`` is derived from ``comparison`` when not given; a point read back from a report has
    ``comparison=None`` and its ``numbers`` only."""

    step: int | None
    adapter: str
    comparison: Comparison | None
    verdict: Verdict | None = None
    numbers: PointNumbers = field(default=None)  # type: ignore[assignment]  # filled in __post_init__

    def __post_init__(self) -> None:
        if self.numbers is None:
            if self.comparison is None:
                raise ConfigError(f"curve point {self.adapter!r} has neither a comparison nor its numbers")
            object.__setattr__(self, "numbers", PointNumbers.from_comparison(self.comparison))

    # The numbers, by name (what renderers read).
    @property
    def base(self) -> float:
        return self.numbers.base

    @property
    def tuned(self) -> float:
        return self.numbers.tuned

    @property
    def delta(self) -> float:
        return self.numbers.delta

    @property
    def ci(self) -> tuple[float, float]:
        return self.numbers.ci

    @property
    def n(self) -> int:
        return self.numbers.n

    @property
    def lost(self) -> int:
        return self.numbers.lost

    @property
    def gained(self) -> int:
        return self.numbers.gained

    @property
    def outcome(self) -> str | None:
        """The verdict's outcome here, or None when the point was only measured."""
        return None if self.verdict is None else self.verdict.outcome

    @property
    def label(self) -> str:
        """``step 25``, or the adapter path when the step is unknown (raw: renderers escape it)."""
        return f"step {self.step}" if self.step is not None else self.adapter

    def to_dict(self) -> dict[str, Any]:
        numbers = self.numbers
        return {
            "step": self.step,
            "adapter": self.adapter,
            "base": numbers.base,
            "tuned": numbers.tuned,
            "delta": numbers.delta,
            "ci": [numbers.ci[0], numbers.ci[1]],
            "confidence": numbers.confidence,
            "p_value": numbers.p_value,
            "n": numbers.n,
            "lost": numbers.lost,
            "gained": numbers.gained,
            "verdict": None
            if self.verdict is None
            else {"outcome": self.verdict.outcome, "reason": self.verdict.reason},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurvePoint:
        """Read a point written by ``to_dict``. Types are checked here, ranges by ``Curve``."""
        step = data["step"]
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise ValueError(f"step {step!r} is not an integer or null")
        adapter = data["adapter"]
        if not isinstance(adapter, str):
            raise ValueError(f"adapter {adapter!r} is not a string")
        low, high = data["ci"]
        numbers = PointNumbers(
            base=_number(data["base"]),
            tuned=_number(data["tuned"]),
            delta=_number(data["delta"]),
            ci=(_number(low), _number(high)),
            confidence=_number(data["confidence"]),
            p_value=_number(data["p_value"]),
            n=_count(data["n"]),
            lost=_count(data["lost"]),
            gained=_count(data["gained"]),
        )
        raw = data.get("verdict")
        verdict = None
        if raw is not None:
            outcome = raw["outcome"]
            if outcome not in _VERDICTS:
                raise ValueError(f"verdict outcome {outcome!r} is not one of {', '.join(_VERDICTS)}")
            verdict = Verdict(outcome, str(raw.get("reason", "")))
        return cls(step=step, adapter=adapter, comparison=None, verdict=verdict, numbers=numbers)


@dataclass
class Curve:
    """One benchmark over the checkpoints of a training run, in step order, with the thresholds of
    the gate that judged it. Validated on construction (``ConfigError``)."""

    benchmark: str
    title: str
    mode: str
    max_drop: float | None
    min_gain: float | None
    strict: bool
    points: list[CurvePoint]

    def __post_init__(self) -> None:
        self.points = list(self.points)
        self.validate()

    def validate(self) -> None:
        """ConfigError naming the point and the field unless the curve is possible: at least one
        point, finite numbers in range, integer steps strictly increasing (points without a step
        only after those with one), no checkpoint twice, known verdicts, finite thresholds."""
        where = f"forgetting curve of {self.benchmark!r}"
        for name in ("max_drop", "min_gain"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or not math.isfinite(value)):
                raise ConfigError(f"{where}: {name} {value!r} is not a finite number of points")
        if not self.points:
            raise ConfigError(f"{where} has no points: a curve needs at least one checkpoint")
        seen: set[str] = set()
        last: int | None = None
        unknown_step = False
        for index, point in enumerate(self.points):
            at = f"{where}, point {index} ({point.adapter!r})"
            problems = point.numbers.problems()
            if problems:
                raise ConfigError(f"{at}: {'; '.join(problems)}")
            if point.verdict is not None and point.verdict.outcome not in _VERDICTS:
                raise ConfigError(f"{at}: verdict {point.verdict.outcome!r} is not one of {', '.join(_VERDICTS)}")
            if point.adapter in seen:
                raise ConfigError(f"{at}: the same checkpoint appears twice")
            seen.add(point.adapter)
            if point.step is None:
                unknown_step = True
                continue
            if isinstance(point.step, bool) or not isinstance(point.step, int) or point.step < 0:
                raise ConfigError(f"{at}: step {point.step!r} is not a non-negative integer")
            if unknown_step:
                raise ConfigError(f"{at}: a point with a step follows one without: points must be in step order")
            if last is not None and point.step <= last:
                raise ConfigError(
                    f"{at}: step {point.step} follows step {last}: points must be in increasing step order"
                )
            last = point.step

    def first_proven_drop(self) -> CurvePoint | None:
        """The first point whose paired interval proves a drop beyond ``max_drop`` (its upper bound
        below ``-max_drop``); None when there is none or no ``max_drop``."""
        if self.max_drop is None:
            return None
        return next((point for point in self.points if point.ci[1] < -self.max_drop), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe. ``first_proven_drop`` (step and adapter, or null) is derived: ``from_dict``
        ignores it and recomputes it from the points."""
        first = self.first_proven_drop()
        return {
            "benchmark": self.benchmark,
            "title": self.title,
            "mode": self.mode,
            "thresholds": {"max_drop": self.max_drop, "min_gain": self.min_gain, "strict": self.strict},
            "first_proven_drop": None if first is None else {"step": first.step, "adapter": first.adapter},
            "points": [point.to_dict() for point in self.points],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Curve:
        """Inverse of ``to_dict``. ConfigError for a dict that is not a possible curve (missing
        keys, wrong types, NaN, steps out of order, unknown verdicts)."""
        name = data.get("benchmark") if isinstance(data, Mapping) else None
        try:
            thresholds = data.get("thresholds") or {}
            raw_points = data["points"]
            if not isinstance(raw_points, Sequence) or isinstance(raw_points, (str, bytes)):
                raise ValueError("points is not a list")
            points = []
            for index, raw in enumerate(raw_points):
                try:
                    points.append(CurvePoint.from_dict(raw))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"point {index}: {_describe(exc)}") from None
            strict = thresholds.get("strict", False)
            if not isinstance(strict, bool):
                raise ValueError(f"strict {strict!r} is not true or false")
            benchmark = data["benchmark"]
            if not isinstance(benchmark, str):
                raise ValueError(f"benchmark {benchmark!r} is not a string")
            return cls(
                benchmark=benchmark,
                title=str(data.get("title") or benchmark),
                mode=str(data.get("mode", "generate")),
                max_drop=_opt_number(thresholds.get("max_drop")),
                min_gain=_opt_number(thresholds.get("min_gain")),
                strict=strict,
                points=points,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"bad forgetting curve{f' of {name!r}' if isinstance(name, str) else ''} in the report: "
                f"{_describe(exc)}; regenerate the report with pytest --ftgate-report"
            ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any) -> float:
    """A JSON number, finite. null, strings, booleans and NaN are refused (json.loads reads NaN)."""
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _opt_number(value: Any) -> float | None:
    return None if value is None else _number(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer count")
    return value


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}"
    return str(exc)
