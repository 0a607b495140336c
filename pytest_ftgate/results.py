"""Result objects: what an evaluation produced and how two evaluations compare."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Literal

from pytest_ftgate import stats
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.text import safe

Outcome = Literal["pass", "fail", "inconclusive", "measured"]


@dataclass(frozen=True)
class ModelInfo:
    """Which model produced a result: a human label and a fingerprint of everything that defines it."""

    label: str
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.label} [{self.fingerprint[:12]}]"


@dataclass(frozen=True)
class Prediction:
    """One example's outcome. ``parsed`` is the answer extracted from ``output`` (None: unparsed)."""

    id: str
    output: str
    parsed: str | None
    gold: str
    correct: bool
    text: str = ""
    logprobs: dict[str, float] | None = None  # logprob mode: each answer's log-probability


@dataclass
class EvalResult:
    """One model on one benchmark. ``score`` is the primary metric in points (0-100)."""

    benchmark: str
    model: ModelInfo
    n: int
    score: float
    metrics: dict[str, float]
    predictions: list[Prediction]
    seconds: float
    title: str = ""
    mode: str = "generate"
    fingerprint: str = ""

    @property
    def correct(self) -> list[bool]:
        return [p.correct for p in self.predictions]

    def by_id(self) -> dict[str, Prediction]:
        return {p.id: p for p in self.predictions}

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "model": {"label": self.model.label, "fingerprint": self.model.fingerprint},
            "n": self.n,
            "score": self.score,
            "metrics": dict(self.metrics),
            "mode": self.mode,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class Flip:
    """An example whose correctness changed between base and tuned: its question, the gold answer,
    each side's reply (``*_output``) and the answer parsed from it (``*_answer``, None: unparsed)."""

    id: str
    text: str
    gold: str
    base_output: str
    tuned_output: str
    base_answer: str | None = None
    tuned_answer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe); ``from_dict`` reads it back."""
        return {
            "id": self.id,
            "text": self.text,
            "gold": self.gold,
            "base_output": self.base_output,
            "tuned_output": self.tuned_output,
            "base_answer": self.base_answer,
            "tuned_answer": self.tuned_answer,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Flip:
        def text(key: str) -> str:
            return str(data.get(key) or "")

        def answer(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(
            str(data["id"]),
            text("text"),
            text("gold"),
            text("base_output"),
            text("tuned_output"),
            answer("base_answer"),
            answer("tuned_answer"),
        )


@dataclass(frozen=True)
class Verdict:
    """``outcome`` is pass, fail or inconclusive, or ``measured`` when no threshold was given (a
    measurement, not a gate: it never fails); ``reason`` is one line a person reads."""

    outcome: Outcome
    reason: str

    @property
    def passed(self) -> bool:
        """Whether the test may pass: the thresholds held, or there were none."""
        return self.outcome in ("pass", "measured")

    def __str__(self) -> str:
        return f"{self.outcome}: {self.reason}"


@dataclass(frozen=True)
class EarlyStop:
    """A comparison that stopped before the last example because the verdict the complete run
    would reach could no longer change (anytime-valid confidence sequence, ``stats``)."""

    used: int
    total: int
    outcome: Outcome
    interval: tuple[float, float]
    max_drop: float | None
    min_gain: float | None
    strict: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe); ``from_dict`` reads it back."""
        return {
            "used": int(self.used),
            "total": int(self.total),
            "outcome": str(self.outcome),
            "interval": [float(self.interval[0]), float(self.interval[1])],
            "max_drop": None if self.max_drop is None else float(self.max_drop),
            "min_gain": None if self.min_gain is None else float(self.min_gain),
            "strict": bool(self.strict),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EarlyStop:
        low, high = data["interval"]
        return cls(
            int(data["used"]),
            int(data["total"]),
            data["outcome"],
            (float(low), float(high)),
            None if data.get("max_drop") is None else float(data["max_drop"]),
            None if data.get("min_gain") is None else float(data["min_gain"]),
            bool(data.get("strict", False)),
        )


@dataclass
class Comparison:
    """Base and tuned on the same examples, paired. ``delta`` and ``ci`` are in points (tuned - base)."""

    base: EvalResult
    tuned: EvalResult
    confidence: float = 0.95
    change: str = "after fine-tuning"  # how the message names the step: "in the candidate" for whole models
    delta: float = field(init=False)
    ci: tuple[float, float] = field(init=False)
    p_value: float = field(init=False)
    lost: list[Flip] = field(init=False)
    gained: list[Flip] = field(init=False)
    drift: dict[str, float] | None = field(init=False)
    early: EarlyStop | None = field(init=False, default=None)
    baseline_note: str | None = None  # where the base side came from: a stored baseline's audit, a re-recording
    notes: list[str] = field(default_factory=list)  # what the gate said computing it (a mode that could not apply)

    def __post_init__(self) -> None:
        base_ids = [p.id for p in self.base.predictions]
        tuned_by_id = self.tuned.by_id()
        if self.base.benchmark != self.tuned.benchmark or set(base_ids) != set(tuned_by_id):
            raise ValueError(
                f"cannot pair {self.base.benchmark!r} ({self.base.n} examples) with "
                f"{self.tuned.benchmark!r} ({self.tuned.n} examples): a comparison needs the same "
                "benchmark evaluated on the same example ids"
            )
        pairs = [(b, tuned_by_id[b.id]) for b in self.base.predictions]
        self.delta = self.tuned.score - self.base.score
        base_ok = [b.correct for b, _ in pairs]
        tuned_ok = [t.correct for _, t in pairs]
        self.ci = stats.paired_diff_interval(base_ok, tuned_ok, confidence=self.confidence)
        self.lost = [_flip(b, t) for b, t in pairs if b.correct and not t.correct]
        self.gained = [_flip(b, t) for b, t in pairs if t.correct and not b.correct]
        self.p_value = stats.mcnemar_exact(len(self.lost), len(self.gained))
        self.drift = _drift(pairs)

    @property
    def benchmark(self) -> str:
        return self.base.benchmark

    @property
    def title(self) -> str:
        return self.base.title or self.base.benchmark

    @property
    def n(self) -> int:
        return self.base.n

    def verdict(self, max_drop: float | None = None, min_gain: float | None = None, strict: bool = False) -> Verdict:
        """Judge the comparison against the user's thresholds (points). See ``stats.decide``.
        Without a threshold the verdict is ``measured``. ConfigError for a threshold that is not
        a finite number (NaN would fail every run, infinity pass every run)."""
        check_thresholds(max_drop=max_drop, min_gain=min_gain)
        if max_drop is None and min_gain is None:
            return Verdict(
                "measured",
                f"{self.summary()} No threshold: measured, not gated (give max_drop or min_gain to make it a gate).",
            )
        early = self.early
        if early is not None and (early.max_drop, early.min_gain, early.strict) == (max_drop, min_gain, strict):
            low, high = early.interval
            return Verdict(
                early.outcome,
                f"{self.summary(max_drop=max_drop, min_gain=min_gain)} Stopped early after {early.used} of "
                f"{early.total} examples: the complete run's verdict can no longer change (anytime-valid "
                f"{self.confidence:.0%} interval for its delta {low:+.1f} to {high:+.1f}).",
            )
        flip_rate = (len(self.lost) + len(self.gained)) / self.n if self.n else None
        outcome, why = stats.decide(
            self.delta,
            self.ci,
            max_drop=max_drop,
            min_gain=min_gain,
            strict=strict,
            n=self.n,
            flip_rate=flip_rate,
            confidence=self.confidence,
        )
        return Verdict(outcome, f"{self.summary(max_drop=max_drop, min_gain=min_gain)}{why}")

    def summary(self, max_drop: float | None = None, min_gain: float | None = None) -> str:
        """``FPB dropped 28.4 points (78.8 -> 50.4) after fine-tuning; allowed 2.0. 970 examples: ...``"""
        title = safe(self.title)
        if self.delta < 0:
            head = f"{title} dropped {-self.delta:.1f} points"
        elif self.delta > 0:
            head = f"{title} gained {self.delta:.1f} points"
        else:
            head = f"{title} did not change"
        head += f" ({self.base.score:.1f} -> {self.tuned.score:.1f}) {self.change}"
        rules = []
        if max_drop is not None:
            rules.append(f"allowed drop {max_drop:.1f}" if min_gain is not None else f"allowed {max_drop:.1f}")
        if min_gain is not None:
            rules.append(f"required gain {min_gain:.1f}")
        if rules:
            head += "; " + ", ".join(rules)
        low, high = self.ci
        text = (
            f"{head}. {self.n} examples: {len(self.lost)} lost, {len(self.gained)} gained "
            f"({self.confidence:.0%} interval {low:+.1f} to {high:+.1f}, McNemar p={self.p_value:.3g})."
        )
        if self.drift is not None:
            text += (
                f" Drift: gold answer log-prob {self.drift['gold_logprob_delta']:+.3f}, "
                f"KL(base||tuned) {self.drift['kl']:.4f}."
            )
        return text

    def failure_detail(self, limit: int = 3) -> str:
        """The first few lost examples, for a failure message (control characters escaped)."""
        lines = []
        for flip in self.lost[:limit]:
            lines.append(
                f"  lost {safe(flip.id)}: {_clip(flip.text)!r} gold={flip.gold!r} "
                f"base={_clip(flip.base_output, 40)!r} tuned={_clip(flip.tuned_output, 40)!r}"
            )
        return "\n".join(lines)

    def assert_no_regression(self, max_drop: float, strict: bool = False) -> None:
        __tracebackhide__ = True
        self._assert(self.verdict(max_drop=max_drop, strict=strict))

    def assert_improves(self, min_gain: float, strict: bool = False) -> None:
        __tracebackhide__ = True
        self._assert(self.verdict(min_gain=min_gain, strict=strict))

    def _assert(self, verdict: Verdict) -> None:
        __tracebackhide__ = True
        if not verdict.passed:
            detail = self.failure_detail()
            raise AssertionError(verdict.reason + ("\n" + detail if detail else ""))


def check_thresholds(*, max_drop: float | None = None, min_gain: float | None = None) -> None:
    """ConfigError unless each given threshold is a finite number of points."""
    for name, value in (("max_drop", max_drop), ("min_gain", min_gain)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number of points, got {value!r}")


def _drift(pairs: list[tuple[Prediction, Prediction]]) -> dict[str, float] | None:
    """Mean change of the gold answer's log-probability, and mean KL divergence base -> tuned over
    the answers (renormalised), where both sides were scored by log-probability. These move long
    before accuracy does."""
    scored = [(b.logprobs, t.logprobs, b.gold) for b, t in pairs if b.logprobs and t.logprobs]
    if not scored:
        return None
    gold_delta = kl = 0.0
    for base, tuned, gold in scored:
        answers = [a for a in base if a in tuned]
        key = next((a for a in answers if a.lower() == gold.strip().lower()), None)
        if key is not None:
            gold_delta += tuned[key] - base[key]
        p, q = _normalise([base[a] for a in answers]), _normalise([tuned[a] for a in answers])
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)
    return {"gold_logprob_delta": gold_delta / len(scored), "kl": kl / len(scored), "n": float(len(scored))}


def _normalise(logprobs: list[float]) -> list[float]:
    top = max(logprobs)
    weights = [math.exp(v - top) for v in logprobs]
    total = sum(weights)
    return [max(w / total, 1e-300) for w in weights]


def _flip(base: Prediction, tuned: Prediction) -> Flip:
    return Flip(base.id, base.text, base.gold, base.output, tuned.output, base.parsed, tuned.parsed)


def _clip(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass(frozen=True)
class Parity:
    """The same model run two ways (two backends, or an export against its source): how often
    the parsed answers agree, and the examples where they do not."""

    a: EvalResult
    b: EvalResult
    agreement: float  # percent of examples with the same parsed answer
    differing: list[Flip]  # base_output = a's reply, tuned_output = b's reply

    def summary(self) -> str:
        return safe(
            f"{self.a.title or self.a.benchmark}: {self.a.model.label} and {self.b.model.label} agree on "
            f"{self.agreement:.1f}% of {self.a.n} examples ({len(self.differing)} differ; scores "
            f"{self.a.score:.1f} vs {self.b.score:.1f})"
        )


def parity(a: EvalResult, b: EvalResult) -> Parity:
    """Agreement of two results of the same benchmark on the same examples (cross-backend parity).
    Backend disagreements are a known source of silent score shifts: measure them."""
    by_id = b.by_id()
    if a.benchmark != b.benchmark or set(by_id) != {p.id for p in a.predictions}:
        raise ValueError("parity needs the same benchmark evaluated on the same example ids")
    differing = [_flip(p, by_id[p.id]) for p in a.predictions if p.parsed != by_id[p.id].parsed]
    agreement = 100.0 * (a.n - len(differing)) / a.n if a.n else 100.0
    return Parity(a, b, agreement, differing)


def compare(base: EvalResult, tuned: EvalResult, *, confidence: float = 0.95) -> Comparison:
    """Pair two results of the same benchmark on the same examples."""
    return Comparison(base, tuned, confidence=confidence)
