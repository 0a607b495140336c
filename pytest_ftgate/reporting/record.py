"""The record of a gated test (``GateRecord``), the JSON report's schema, and the run's overall
outcome. The report file itself (meta, writing, reading) is ``reporting.json_report``.

Pure functions over plain data. A ``GateRecord`` is the JSON-serialisable record of one gated
test, built from a ``Comparison`` and its ``Verdict``; every renderer (``terminal``,
``markdown``, ``plot``, ``junit``) takes records alone. Records travel between xdist workers and
the controller as ``to_dict()`` output.

Scores, deltas and interval bounds are percentage points (0-100), tuned minus base.

Text from data files and models (example ids and texts, replies, benchmark titles) goes through
``text.safe`` in every renderer but JSON: control characters and bidi overrides show as escapes
(``\x1b``), so they can neither drive a terminal nor forge a line; Markdown also escapes HTML and
its own punctuation. The JSON report keeps the raw text (JSON escapes it itself).

JSON report schema (``pytest-ftgate/report``, version 1)
--------------------------------------------------------
Written by ``--ftgate-report PATH``. Readers should check ``schema`` and ``version``; a new field
may be added within version 1, a removed or changed field means version 2.

``schema``
    Always ``"pytest-ftgate/report"``.
``version``
    Schema version, an integer (``1``).
``meta``
    The run. ``ftgate``: pytest-ftgate version. ``started`` / ``finished``: ISO 8601 UTC times.
    ``backend``: backend name. ``base``: base model (hub id or folder). ``adapter``: adapter folder
    or null. ``candidate``: candidate model or null. ``confidence``: confidence level of the
    intervals (e.g. 0.95). ``limit``: examples per benchmark or null (all). ``mode``: the scoring
    mode asked for (``generate`` or ``logprob``; each gate records the mode it used). ``strict``:
    the session's default policy. Callers may add keys; readers ignore those they do not know.
``summary``
    ``gates`` (number of gated tests, errored ones included), ``passed``, ``failed``,
    ``inconclusive``, ``measured``, ``errors`` (counts by verdict) and ``outcome``, the first that
    applies: ``"error"`` if any gate errored (its comparison could not be computed), ``"fail"``
    if any failed, ``"inconclusive"`` if any was, ``"pass"`` if any passed (measurements beside
    it do not change that), ``"measured"`` when every test only measured (no threshold: nothing
    was gated), and ``"pass"`` with no gates at all.
``pick``
    Present only with ``--ftgate-pick=last-passing``: ``rule`` (``"last-passing"``), ``path`` (the
    checkpoint to promote: its folder, or an mlx step save's file; null when none passes every
    gate), ``label`` (as the reports name it), ``step`` (null when unknown) and ``why`` (one line).
``gates``
    One object per gated test, in run order:

    ``nodeid``
        The pytest node id, e.g. ``tests/test_gate.py::test_no_forgetting[fpb]``.
    ``benchmark`` / ``title``
        Registry name (``fpb``) and display title (``FPB``).
    ``mode``
        How answers were scored: ``"generate"`` or ``"logprob"``; base and tuned always alike.
    ``error``
        null, or the error text of a gate whose comparison could not be computed (an adapter
        that does not fit, a fixture that raised): its ``verdict.outcome`` is ``"error"``, its
        numbers (scores, ``delta``, ``ci``, ``p_value``) are null and ``n``, ``lost``, ``gained`` 0.
    ``baseline_note``
        null, or one line about the stored baseline the base side came from (recorded,
        re-recorded, audited).
    ``n``
        Examples evaluated (the same ids for base and tuned).
    ``base`` / ``tuned``
        ``score`` (primary metric, points), ``model`` (label), ``fingerprint`` (of everything that
        defines the model's answers), ``metrics`` (dict, points: ``accuracy``, ``unparsed_rate``,
        ``macro_f1`` for FPB, ...; null where undefined), ``seconds`` (evaluation wall time;
        small when cached).
    ``delta``
        ``tuned.score - base.score``, points.
    ``ci``
        ``[low, high]``: paired interval for the delta (Tango score interval), points.
    ``confidence``
        Confidence level of ``ci``.
    ``p_value``
        Exact two-sided McNemar p-value of "no change".
    ``lost`` / ``gained``
        Number of examples base got right and tuned wrong, and the reverse.
    ``thresholds``
        ``max_drop`` (points or null), ``min_gain`` (points or null), ``strict`` (bool): what the
        marker asked for.
    ``verdict``
        ``outcome`` and ``reason`` (one line). ``outcome`` is ``"pass"``, ``"fail"`` or
        ``"inconclusive"`` for a gate with a threshold; ``"measured"`` for a marker with neither
        ``max_drop`` nor ``min_gain`` (and no ``ftgate_max_drop`` default): a measurement that
        never fails; ``"error"`` when the comparison could not be computed.
    ``test_outcome``
        The test's own result (``"passed"``, ``"failed"``, ...) when known, else null: a test can
        fail on a custom assertion although the gate passed.
    ``seconds``
        ``base.seconds + tuned.seconds``. Tests on one benchmark share the gate's evaluations: the
        same time on each of them is one time (the terminal shows it once, then ``shared``).
    ``top_lost``
        Up to 5 lost examples: ``id``, ``text`` (the question, clipped), ``gold``,
        ``base_output``, ``tuned_output`` (the replies, clipped), ``base_answer``,
        ``tuned_answer`` (the answers parsed from them, null: unparsed). ``--ftgate-flips PATH``
        writes every lost and gained example (``reporting.flips``).
    ``early_stop``
        null, or how the run stopped early (``--ftgate-early-stop``): ``used`` of ``total``
        examples, ``outcome`` (the verdict the complete run would reach), ``interval`` (the
        anytime-valid interval for its delta, points), ``max_drop``, ``min_gain``, ``strict``.
    ``drift``
        null, or (``logprob`` mode) ``gold_logprob_delta`` (mean change of the gold answer's
        log-probability), ``kl`` (mean KL divergence base -> tuned over the answers) and ``n``
        (examples with log-probabilities on both sides).
    ``notes``
        What the gate said while computing the comparison (e.g. a benchmark scored in
        ``generate`` mode because the backend has no log-probabilities); a list of lines.
    ``advice``
        The seed study's decision framework: ``framework`` (advice for this baseline, see
        ``advice``) and ``measured`` (what fine-tuning did, see ``outcome_note``); both null for
        an errored gate. Derived from the fields above; ignored by ``GateRecord.from_dict``.
    ``curve``
        Present only when the run gated several checkpoints of a training run (absent otherwise):
        the forgetting curve of this test's benchmark, one point per checkpoint in step order
        (``pytest_ftgate.curve.Curve``). ``benchmark``, ``title``, ``mode``, ``thresholds`` (as
        above), ``first_proven_drop`` (``step`` and ``adapter`` of the first checkpoint whose
        paired interval proves a drop beyond ``max_drop``, i.e. ``ci[1] < -max_drop``; null when
        none or no ``max_drop``; derived, recomputed on reading) and ``points``: each ``step``
        (integer, null when unknown), ``adapter`` (checkpoint path), ``base`` / ``tuned`` (scores),
        ``delta``, ``ci``, ``confidence``, ``p_value``, ``n``, ``lost``, ``gained`` (as above, for
        base vs that checkpoint on the same examples; ``ci`` is the anytime-valid interval where
        that comparison stopped early) and ``verdict`` (``outcome`` and ``reason`` of
        this gate at that checkpoint, or null when it was only measured). The top-level fields
        describe the judged checkpoint. Reading refuses a curve with non-finite or impossible
        numbers, steps out of order, a repeated checkpoint or another benchmark (``ConfigError``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_ftgate.curve import Curve
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.reporting.summary import advice, outcome_note
from pytest_ftgate.results import EarlyStop, Flip

if TYPE_CHECKING:
    from pytest_ftgate.results import Comparison, Verdict

SCHEMA = "pytest-ftgate/report"
SCHEMA_VERSION = 1
TOP_LOST = 5
TEXT_WIDTH = 240  # characters of a lost example's question kept in a record
OUTPUT_WIDTH = 160  # characters of a model reply kept in a record

# --- the record ------------------------------------------------------------------------------


@dataclass
class GateRecord:
    """One gated test, as plain data: what the reports show and what xdist workers send home."""

    nodeid: str
    benchmark: str
    title: str
    base: float
    tuned: float
    delta: float
    ci: tuple[float, float]
    confidence: float
    p_value: float
    n: int
    lost: int
    gained: int
    outcome: str
    reason: str
    max_drop: float | None = None
    min_gain: float | None = None
    strict: bool = False
    top_lost: list[Flip] = field(default_factory=list)  # texts clipped
    base_seconds: float = 0.0
    tuned_seconds: float = 0.0
    base_model: str = ""
    base_fingerprint: str = ""
    tuned_model: str = ""
    tuned_fingerprint: str = ""
    base_metrics: dict[str, float] = field(default_factory=dict)
    tuned_metrics: dict[str, float] = field(default_factory=dict)
    mode: str = "generate"
    test_outcome: str | None = None
    error: str | None = None  # the comparison could not be computed (outcome "error")
    baseline_note: str | None = None  # one line about the stored baseline used
    early: EarlyStop | None = None  # how the run stopped early, if it did
    drift: dict[str, float] | None = None  # logprob mode: gold_logprob_delta, kl, n
    notes: list[str] = field(default_factory=list)  # what the gate said while computing the comparison
    curve: Curve | None = None  # the forgetting curve over a training run's checkpoints, if one was gated

    @property
    def seconds(self) -> float:
        """Evaluation time of base and tuned together."""
        return self.base_seconds + self.tuned_seconds

    @classmethod
    def from_comparison(
        cls,
        comparison: Comparison,
        verdict: Verdict,
        *,
        nodeid: str,
        max_drop: float | None = None,
        min_gain: float | None = None,
        strict: bool = False,
    ) -> GateRecord:
        """The record of one test: its comparison, the verdict of its thresholds, its node id."""
        base, tuned = comparison.base, comparison.tuned
        top = [
            dataclasses.replace(
                flip,
                id=str(flip.id),
                text=_clip(flip.text, TEXT_WIDTH),
                gold=_clip(flip.gold, OUTPUT_WIDTH),
                base_output=_clip(flip.base_output, OUTPUT_WIDTH),
                tuned_output=_clip(flip.tuned_output, OUTPUT_WIDTH),
            )
            for flip in comparison.lost[:TOP_LOST]
        ]
        low, high = comparison.ci
        return cls(
            nodeid=nodeid,
            benchmark=comparison.benchmark,
            title=comparison.title,
            base=float(base.score),
            tuned=float(tuned.score),
            delta=float(comparison.delta),
            ci=(float(low), float(high)),
            confidence=float(comparison.confidence),
            p_value=float(comparison.p_value),
            n=int(comparison.n),
            lost=len(comparison.lost),
            gained=len(comparison.gained),
            outcome=str(verdict.outcome),
            reason=str(verdict.reason),
            max_drop=None if max_drop is None else float(max_drop),
            min_gain=None if min_gain is None else float(min_gain),
            strict=bool(strict),
            top_lost=top,
            base_seconds=float(base.seconds),
            tuned_seconds=float(tuned.seconds),
            base_model=base.model.label,
            base_fingerprint=base.model.fingerprint,
            tuned_model=tuned.model.label,
            tuned_fingerprint=tuned.model.fingerprint,
            base_metrics={str(k): float(v) for k, v in base.metrics.items()},
            tuned_metrics={str(k): float(v) for k, v in tuned.metrics.items()},
            mode=base.mode,
            baseline_note=comparison.baseline_note,
            early=comparison.early,
            drift=None if comparison.drift is None else {str(k): float(v) for k, v in comparison.drift.items()},
            notes=list(dict.fromkeys(comparison.notes)),
        )

    @classmethod
    def from_error(
        cls,
        *,
        nodeid: str,
        benchmark: str,
        title: str,
        error: str,
        max_drop: float | None = None,
        min_gain: float | None = None,
        strict: bool = False,
        confidence: float = 0.95,
    ) -> GateRecord:
        """The record of a gated test whose comparison could not be computed: outcome ``error``,
        no numbers (NaN here, null in JSON)."""
        nan = math.nan
        return cls(
            nodeid=nodeid,
            benchmark=benchmark,
            title=title or benchmark,
            base=nan,
            tuned=nan,
            delta=nan,
            ci=(nan, nan),
            confidence=float(confidence),
            p_value=nan,
            n=0,
            lost=0,
            gained=0,
            outcome="error",
            reason=f"the comparison could not be computed: {error}",
            max_drop=max_drop,
            min_gain=min_gain,
            strict=strict,
            test_outcome="error",
            error=error,
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``gates[]`` entry of the JSON report (see the module docstring). JSON-safe."""
        errored = self.outcome == "error"
        data = {
            "nodeid": self.nodeid,
            "benchmark": self.benchmark,
            "title": self.title,
            "mode": self.mode,
            "error": self.error,
            "baseline_note": self.baseline_note,
            "n": self.n,
            "base": {
                "score": _finite(self.base),
                "model": self.base_model,
                "fingerprint": self.base_fingerprint,
                "metrics": _json_metrics(self.base_metrics),
                "seconds": self.base_seconds,
            },
            "tuned": {
                "score": _finite(self.tuned),
                "model": self.tuned_model,
                "fingerprint": self.tuned_fingerprint,
                "metrics": _json_metrics(self.tuned_metrics),
                "seconds": self.tuned_seconds,
            },
            "delta": _finite(self.delta),
            "ci": [_finite(self.ci[0]), _finite(self.ci[1])],
            "confidence": self.confidence,
            "p_value": _finite(self.p_value),
            "lost": self.lost,
            "gained": self.gained,
            "thresholds": {"max_drop": self.max_drop, "min_gain": self.min_gain, "strict": self.strict},
            "verdict": {"outcome": self.outcome, "reason": self.reason},
            "test_outcome": self.test_outcome,
            "seconds": self.seconds,
            "top_lost": [example.to_dict() for example in self.top_lost],
            "early_stop": None if self.early is None else self.early.to_dict(),
            "drift": None if self.drift is None else _json_metrics(self.drift),
            "notes": list(self.notes),
            "advice": {
                "framework": None if errored else advice(self.base),
                "measured": None if errored else outcome_note(self),
            },
        }
        if self.curve is not None:  # absent, not null, without one: reports of one adapter are unchanged
            data["curve"] = self.curve.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateRecord:
        """Inverse of ``to_dict`` (derived keys such as ``advice`` and ``seconds`` are ignored).
        ConfigError for a curve that is not possible or not of this benchmark."""
        base, tuned = data["base"], data["tuned"]
        curve = None if data.get("curve") is None else Curve.from_dict(data["curve"])
        if curve is not None and curve.benchmark != data["benchmark"]:
            raise ConfigError(
                f"the gate {data['nodeid']!r} on {data['benchmark']!r} carries a curve of {curve.benchmark!r}: "
                "regenerate the report with pytest --ftgate-report"
            )
        thresholds = data.get("thresholds", {})
        verdict = data["verdict"]
        low, high = data["ci"]
        return cls(
            nodeid=str(data["nodeid"]),
            benchmark=str(data["benchmark"]),
            title=str(data.get("title") or data["benchmark"]),
            base=_nan_float(base["score"]),
            tuned=_nan_float(tuned["score"]),
            delta=_nan_float(data["delta"]),
            ci=(_nan_float(low), _nan_float(high)),
            confidence=float(data["confidence"]),
            p_value=_nan_float(data["p_value"]),
            n=int(data["n"]),
            lost=int(data["lost"]),
            gained=int(data["gained"]),
            outcome=str(verdict["outcome"]),
            reason=str(verdict.get("reason", "")),
            max_drop=_opt_float(thresholds.get("max_drop")),
            min_gain=_opt_float(thresholds.get("min_gain")),
            strict=bool(thresholds.get("strict", False)),
            top_lost=[Flip.from_dict(example) for example in data.get("top_lost", [])],
            base_seconds=float(base.get("seconds", 0.0)),
            tuned_seconds=float(tuned.get("seconds", 0.0)),
            base_model=str(base.get("model", "")),
            base_fingerprint=str(base.get("fingerprint", "")),
            tuned_model=str(tuned.get("model", "")),
            tuned_fingerprint=str(tuned.get("fingerprint", "")),
            base_metrics=_read_metrics(base.get("metrics", {})),
            tuned_metrics=_read_metrics(tuned.get("metrics", {})),
            mode=str(data.get("mode", "generate")),
            test_outcome=data.get("test_outcome"),
            error=_opt_str(data.get("error")),
            baseline_note=_opt_str(data.get("baseline_note")),
            early=None if data.get("early_stop") is None else EarlyStop.from_dict(data["early_stop"]),
            drift=None if data.get("drift") is None else _read_metrics(data["drift"]),
            notes=[str(note) for note in data.get("notes", [])],
            curve=curve,
        )


def collate(records: Iterable[GateRecord]) -> list[GateRecord]:
    """One record per node id (the last one wins, e.g. after a rerun), sorted by node id.

    The xdist controller receives records from workers in any order; this makes every report
    deterministic.
    """
    by_id: dict[str, GateRecord] = {}
    for record in records:
        by_id[record.nodeid] = record
    return [by_id[key] for key in sorted(by_id)]


OUTCOMES = ("pass", "fail", "inconclusive", "measured", "error")


def overall_outcome(records: Sequence[GateRecord]) -> str:
    """``error`` if any gate errored, else ``fail`` if any failed, else ``inconclusive`` if any
    was, else ``pass`` if any passed (or there are no records), else ``measured``: every test only
    measured, nothing was gated."""
    outcomes = {record.outcome for record in records}
    for outcome in ("error", "fail", "inconclusive", "pass"):
        if outcome in outcomes:
            return outcome
    return "measured" if outcomes else "pass"


# --- helpers ---------------------------------------------------------------------------------


def _clip(text: str, width: int) -> str:
    """Keep line breaks (the Markdown shows them) but trim trailing space and length."""
    text = str(text).strip()
    return text if len(text) <= width else text[: width - 1].rstrip() + "\u2026"


def _json_metrics(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """JSON has no NaN or infinity: an undefined metric is written as null."""
    return {key: (value if math.isfinite(value) else None) for key, value in metrics.items()}


def _read_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {str(key): (math.nan if value is None else float(value)) for key, value in metrics.items()}


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _finite(value: float) -> float | None:
    """JSON has no NaN: a number an errored gate does not have is written as null."""
    return value if math.isfinite(value) else None


def _nan_float(value: Any) -> float:
    return math.nan if value is None else float(value)

