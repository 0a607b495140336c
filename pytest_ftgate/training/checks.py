"""The check a training callback runs every N steps, independent of the training library.

``GateChecks`` holds the configured gates and their sample (examples drawn once, in a fixed
shuffled order). ``check(base, tuned, step)`` evaluates each gate on the model being trained,
chunk by chunk, pairs it with the base's answers (evaluated once for the whole run: they are kept
in memory by example id) and stops the chunk loop as soon as the anytime-valid confidence sequence
(``stats.early_stop_decision``) settles what the full sample's verdicts mean for training:

- ``measured`` (the default policy): the drop measured on the whole sample is within the margin
  (``"pass"``) or not (``"fail"``);
- ``proven`` (the strict policy): the interval proves the margin holds (``"pass"``), proves it is
  broken (``"fail"``), or neither (``"inconclusive"``).

A check *passes* when every gate's ``measured`` is ``"pass"`` and none is proven to fail; it
*stops training* when a gate is proven to fail (``strict=True``, the default) or, with
``strict=False``, when a gate's measured drop is beyond its margin. A gate's look ends once
``measured`` is settled and, for a measured failure under ``strict``, ``proven`` too (a measured
pass is never a proven failure), so ``proven`` may be None: not settled, and not needed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Any

from pytest_ftgate import benchmarks as registry
from pytest_ftgate import stats
from pytest_ftgate.backends import Model
from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.cache import PredictionCache
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.fingerprint import digest
from pytest_ftgate.gate import EARLY_SEED
from pytest_ftgate.modes import check_mode
from pytest_ftgate.results import Comparison
from pytest_ftgate.runner import evaluate

DEFAULT_SAMPLE = 200  # examples per gate (at most): a check's worst-case cost
DEFAULT_CHUNK = 20  # examples per look of the early stop
LAST_PASSING = "ftgate-last-passing"  # the folder, in the training output folder, of the last passing model
CHECK_FILE = "ftgate-check.json"  # in that folder: the check that passed
_THRESHOLDS = ("max_drop", "min_gain", "mode")


@dataclass(frozen=True)
class GateSpec:
    """One gate of a training run: a benchmark, its thresholds (points) and scoring mode."""

    benchmark: Benchmark
    max_drop: float | None = None
    min_gain: float | None = None
    mode: str = "logprob"


@dataclass(frozen=True)
class GateCheck:
    """One gate at one step: the delta (points) on the examples used, its interval (anytime-valid
    when the check stopped early, else the paired interval of the whole sample), both verdicts."""

    step: int
    benchmark: str
    used: int  # examples evaluated before the verdict was settled
    total: int  # the sample's size
    base_score: float
    tuned_score: float
    delta: float
    interval: tuple[float, float]
    measured: str  # "pass" | "fail": the default policy (measured drop vs margin)
    proven: str | None  # "pass" | "fail" | "inconclusive": the strict policy (interval vs margin); None: not settled
    # when the check ended (it ends once ``measured`` decides what happens: see ``GateChecks.check``)
    lost: int
    gained: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["interval"] = list(self.interval)
        return data


@dataclass
class CheckResult:
    """Every gate at one step, with the check's cost."""

    step: int
    gates: list[GateCheck]
    seconds: float
    strict: bool = True
    saved: str | None = None  # where the passing model was saved, if it was

    @property
    def passed(self) -> bool:
        return all(g.measured == "pass" and g.proven != "fail" for g in self.gates)

    @property
    def failed(self) -> list[GateCheck]:
        """The gates that stop training: proven to fail (strict) or measured beyond the margin."""
        return [g for g in self.gates if (g.proven if self.strict else g.measured) == "fail"]

    def log_entry(self) -> dict[str, Any]:
        """Flat, JSON-safe values for a trainer's log (``ftgate/<benchmark>/<what>``)."""
        entry: dict[str, Any] = {"ftgate/seconds": round(self.seconds, 3), "ftgate/passed": self.passed}
        for g in self.gates:
            prefix = f"ftgate/{g.benchmark}"
            entry.update({
                f"{prefix}/delta": round(g.delta, 3), f"{prefix}/low": round(g.interval[0], 3),
                f"{prefix}/high": round(g.interval[1], 3), f"{prefix}/measured": g.measured,
                f"{prefix}/proven": g.proven or "undecided", f"{prefix}/used": g.used,
            })  # fmt: skip
        return entry

    def line(self) -> str:
        """One line for a console: step, each gate's delta, interval and verdicts, the cost."""
        parts = [
            f"{g.benchmark} {g.delta:+.1f} [{g.interval[0]:+.1f}, {g.interval[1]:+.1f}] "
            f"{g.measured}/{g.proven or 'undecided'} ({g.used}/{g.total})"
            for g in self.gates
        ]
        verdict = "STOP" if self.failed else "pass" if self.passed else "keep going"
        return f"ftgate step {self.step}: {'; '.join(parts)}: {verdict} ({self.seconds:.1f} s)"


class _MemoryCache(PredictionCache):
    """A prediction cache in memory: the base's answers, kept for the whole training run."""

    def __init__(self) -> None:
        super().__init__(None)
        self.records: dict[str, dict[str, dict[str, Any]]] = {}

    def get(self, key: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return dict(self.records.get(digest(key), {}))

    def add(self, key: dict[str, Any], example_id: str, record: dict[str, Any]) -> None:
        self.records.setdefault(digest(key), {})[example_id] = record


def parse_gates(gates: Mapping[Any, Mapping[str, Any]] | Iterable[tuple[Any, Mapping[str, Any]]]) -> list[GateSpec]:
    """``{"fpb": {"max_drop": 2.0}}`` or ``[("fpb", {"max_drop": 2.0}), (Benchmark, {...})]`` as specs.
    Benchmarks by registry name or ``Benchmark`` object; ``mode`` defaults to ``logprob`` where
    the benchmark supports it (one forward pass per example: the cheapest check)."""
    pairs = list(gates.items()) if isinstance(gates, Mapping) else list(gates)
    if not pairs:
        raise ConfigError("no gates given to the training callback: pass gates={'fpb': {'max_drop': 2.0}}")
    specs = []
    for item in pairs:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping)):
            raise ConfigError(
                f"gate {item!r} is not (benchmark, thresholds): pass gates={{'fpb': {{'max_drop': 2.0}}}}"
            )
        name, thresholds = item
        unknown = sorted(set(thresholds) - set(_THRESHOLDS))
        if unknown:
            raise ConfigError(f"gate {name!r}: unknown setting(s) {unknown}; allowed: {', '.join(_THRESHOLDS)}")
        bench = name if isinstance(name, Benchmark) else registry.get_benchmark(str(name))
        max_drop, min_gain = thresholds.get("max_drop"), thresholds.get("min_gain")
        try:
            stats.EarlyStopPolicy(max_drop=max_drop, min_gain=min_gain)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"gate {bench.name!r}: {exc}: pass max_drop=POINTS and/or min_gain=POINTS") from None
        mode = thresholds.get("mode") or ("logprob" if bench.supports_logprob else "generate")
        specs.append(GateSpec(bench, max_drop, min_gain, check_mode(mode, bench)))
    return specs


class GateChecks:
    """The configured gates of one training run and their fixed samples; ``check`` runs them."""

    def __init__(
        self,
        gates: Mapping[Any, Mapping[str, Any]] | Iterable[tuple[Any, Mapping[str, Any]]],
        *,
        data: str | os.PathLike[str] | None = None,
        sample: int | None = DEFAULT_SAMPLE,
        chunk: int = DEFAULT_CHUNK,
        strict: bool = True,
        confidence: float = 0.95,
        batch_size: int | None = None,
    ) -> None:
        if sample is not None and sample < 1:
            raise ConfigError(f"sample={sample}: pass a positive number of examples per gate (or None for all)")
        if chunk < 1:
            raise ConfigError(f"chunk={chunk}: pass a positive number of examples per look")
        self.specs = parse_gates(gates)
        self.data = None if data is None else str(data)
        self.sample = sample
        self.chunk = chunk
        self.strict = strict
        self.confidence = confidence
        self.batch_size = batch_size
        self.base_cache = _MemoryCache()
        self._examples: dict[str, list[Example]] = {}

    def examples(self, spec: GateSpec) -> list[Example]:
        """The gate's sample (``Benchmark.select``: seeded, stratified) in a fixed shuffled order."""
        bench = spec.benchmark
        if bench.name not in self._examples:
            chosen = bench.select(bench.load(self.data), self.sample)
            self._examples[bench.name] = sorted(chosen, key=lambda e: digest([EARLY_SEED, e.id]))
        return self._examples[bench.name]

    def base_answers(self, base: Model) -> None:
        """Evaluate the base on every gate's whole sample now (before training changes the weights:
        a model that is trained in full, without an adapter that can be switched off)."""
        for spec in self.specs:
            evaluate(spec.benchmark, self.examples(spec), base, cache=self.base_cache, mode=spec.mode,
                     batch_size=self.batch_size)  # fmt: skip

    def check(self, base: Model, tuned: Model, step: int) -> CheckResult:
        """Every gate on ``tuned`` (its answers are not kept) against ``base`` (kept)."""
        started = time.perf_counter()
        results = [self._check_one(spec, base, tuned, step) for spec in self.specs]
        return CheckResult(step, results, time.perf_counter() - started, self.strict)

    def _check_one(self, spec: GateSpec, base: Model, tuned: Model, step: int) -> GateCheck:
        order = self.examples(spec)
        total = len(order)
        scratch = _MemoryCache()  # the tuned answers of one check: each look reuses the last one's
        measured_policy = stats.EarlyStopPolicy(spec.max_drop, spec.min_gain, strict=False)
        proven_policy = stats.EarlyStopPolicy(spec.max_drop, spec.min_gain, strict=True)
        for end in range(min(self.chunk, total), total + self.chunk, self.chunk):
            part = order[: min(end, total)]
            run = {"mode": spec.mode, "batch_size": self.batch_size}
            base_result = evaluate(spec.benchmark, part, base, cache=self.base_cache, **run)  # type: ignore[arg-type]
            tuned_result = evaluate(spec.benchmark, part, tuned, cache=scratch, **run)  # type: ignore[arg-type]
            comparison = Comparison(base_result, tuned_result, confidence=self.confidence)
            lost, gained, n = len(comparison.lost), len(comparison.gained), len(part)
            measured = measured_policy.decision(lost, gained, n, total, self.confidence)
            proven = proven_policy.decision(lost, gained, n, total, self.confidence)
            # Settled when what the check does is known: a measured pass can be no proven failure
            # (the full sample's interval lies around its delta); a measured failure stops training
            # under the default policy, and under strict only once it is proven.
            if measured is not None and (measured == "pass" or not self.strict or proven is not None):
                # stopped early: the anytime-valid interval (a fixed-sample one is not valid after
                # looking); the whole sample: the paired interval every gate reports
                low, high = (
                    stats.paired_confidence_sequence(lost, gained, n, confidence=self.confidence, n_max=total)
                    if n < total
                    else comparison.ci
                )
                return GateCheck(
                    step, spec.benchmark.name, n, total, base_result.score, tuned_result.score,
                    comparison.delta, (low, high), measured, proven, lost, gained,
                )  # fmt: skip
        raise AssertionError("early_stop_decision decides at the last example")  # pragma: no cover



def keep_passing(place: Path, result: CheckResult, write: Callable[[Path], None]) -> Path:
    """Save the passing model with ``write(folder)`` in place of the previous one at ``place``
    (written beside it, then swapped in: an interrupted save never leaves a broken folder there),
    with the check that passed in ``CHECK_FILE``."""
    fresh = place.with_name(place.name + ".tmp")
    shutil.rmtree(fresh, ignore_errors=True)
    write(fresh)
    record = {"step": result.step, "gates": [g.to_dict() for g in result.gates], "seconds": result.seconds}
    (fresh / CHECK_FILE).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(place, ignore_errors=True)
    fresh.rename(place)
    result.saved = str(place)
    return place
