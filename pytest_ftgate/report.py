"""Reports of a gated run: terminal summary, JSON, Markdown, PNG chart, JUnit XML properties.

Pure functions over plain data. A ``GateRecord`` is the JSON-serialisable record of one gated
test, built from a ``Comparison`` and its ``Verdict``; every renderer takes a list of records
(and, where it says so, a ``meta`` dict). No pytest import; matplotlib is imported only inside
``write_plot``. Records travel between xdist workers and the controller as ``to_dict()`` output.

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
        ``base.seconds + tuned.seconds``.
    ``top_lost``
        Up to 5 lost examples: ``id``, ``text`` (the question, clipped), ``gold``,
        ``base_output``, ``tuned_output`` (clipped).
    ``advice``
        The seed study's decision framework: ``framework`` (advice for this baseline, see
        ``advice``) and ``measured`` (what fine-tuning did, see ``outcome_note``); both null for
        an errored gate. Derived from the fields above; ignored by ``GateRecord.from_dict``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ftgate.errors import ConfigError
from pytest_ftgate.text import safe

if TYPE_CHECKING:
    from pytest_ftgate.results import Comparison, Verdict

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "GateRecord",
    "LostExample",
    "advice",
    "collate",
    "headline",
    "junit_properties",
    "load_json",
    "make_meta",
    "outcome_note",
    "overall_outcome",
    "require_matplotlib",
    "summary_lines",
    "to_json",
    "to_markdown",
    "write_json",
    "write_markdown",
    "write_plot",
    "write_summary",
]

SCHEMA = "pytest-ftgate/report"
SCHEMA_VERSION = 1
TOP_LOST = 5
TEXT_WIDTH = 240  # characters of a lost example's question kept in a record
OUTPUT_WIDTH = 160  # characters of a model reply kept in a record
PLOT_INSTALL_HINT = "pip install 'pytest-ftgate[plot]'"


# --- the record ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LostExample:
    """An example base answered correctly and tuned did not (texts clipped)."""

    id: str
    text: str
    gold: str
    base_output: str
    tuned_output: str

    def to_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "text": self.text,
            "gold": self.gold,
            "base_output": self.base_output,
            "tuned_output": self.tuned_output,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LostExample:
        return cls(
            str(data["id"]),
            str(data.get("text", "")),
            str(data.get("gold", "")),
            str(data.get("base_output", "")),
            str(data.get("tuned_output", "")),
        )


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
    top_lost: list[LostExample] = field(default_factory=list)
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
            LostExample(
                str(flip.id),
                _clip(flip.text, TEXT_WIDTH),
                _clip(flip.gold, OUTPUT_WIDTH),
                _clip(flip.base_output, OUTPUT_WIDTH),
                _clip(flip.tuned_output, OUTPUT_WIDTH),
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
            baseline_note=getattr(comparison, "baseline_note", None),
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
        return {
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
            "advice": {
                "framework": None if errored else advice(self.base),
                "measured": None if errored else outcome_note(self),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateRecord:
        """Inverse of ``to_dict`` (derived keys such as ``advice`` and ``seconds`` are ignored)."""
        base, tuned = data["base"], data["tuned"]
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
            top_lost=[LostExample.from_dict(example) for example in data.get("top_lost", [])],
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


# --- the seed study's decision framework -----------------------------------------------------

LOW_BASELINE = 40.0
HIGH_BASELINE = 70.0


def advice(base_score: float) -> str:
    """The seed study's decision framework for a baseline score (points, 0-100).

    Below 40: train aggressively. 40 to 70 (both included): train conservatively and monitor.
    Above 70: don't fine-tune, or use very conservative parameters (the forgetting case).
    """
    if base_score < LOW_BASELINE:
        return "baseline below 40%: train aggressively"
    if base_score <= HIGH_BASELINE:
        return "baseline 40-70%: train conservatively, monitor"
    return "baseline above 70%: don't fine-tune, or use very conservative parameters"


def outcome_note(record: GateRecord) -> str:
    """What fine-tuning measurably did: ``improved +6.8``, ``regressed -28.4 (forgetting)``, or
    ``no clear change (-1.2, interval -4.0 to +1.6)`` when the interval includes zero."""
    low, high = record.ci
    if high < 0:
        return f"regressed {_signed(record.delta)} (forgetting)"
    if low > 0:
        return f"improved {_signed(record.delta)}"
    return f"no clear change ({_signed(record.delta)}, interval {_signed(low)} to {_signed(high)})"


_OUTCOMES = ("pass", "fail", "inconclusive", "measured", "error")


def overall_outcome(records: Sequence[GateRecord]) -> str:
    """``error`` if any gate errored, else ``fail`` if any failed, else ``inconclusive`` if any
    was, else ``pass`` if any passed (or there are no records), else ``measured``: every test only
    measured, nothing was gated."""
    outcomes = {record.outcome for record in records}
    for outcome in ("error", "fail", "inconclusive", "pass"):
        if outcome in outcomes:
            return outcome
    return "measured" if outcomes else "pass"


def headline(records: Sequence[GateRecord]) -> str:
    """``1 of 3 benchmarks regressed``, ``all 3 benchmarks passed``, ``2 of 4 gates failed, 1
    inconclusive``, ``FPB errored``, ``FPB measured (no threshold)``. Titles are escaped (``safe``)."""
    total = len(records)
    if total == 0:
        return "no gates ran"
    noun = "benchmarks" if len({r.benchmark for r in records}) == total else "gates"
    errored = [r for r in records if r.outcome == "error"]
    failed = [r for r in records if r.outcome == "fail"]
    unsure = sum(r.outcome == "inconclusive" for r in records)
    measured = sum(r.outcome == "measured" for r in records)
    own = sum(r.test_outcome == "failed" and r.outcome != "fail" for r in records)
    own_note = (
        f" ({own} test{'s' if own > 1 else ''} failed on {'their' if own > 1 else 'its'} own assertions)" if own else ""
    )
    if not errored and not failed and not unsure:
        if not measured:
            text = f"all {total} {noun} passed" if total > 1 else f"{safe(records[0].title)} passed"
        elif measured == total:
            text = f"all {total} {noun} measured" if total > 1 else f"{safe(records[0].title)} measured"
            text += " (no threshold)"
        else:
            text = f"{total - measured} of {total} {noun} passed, {measured} measured (no threshold)"
        return text + own_note
    if total == 1:  # "FPB regressed", not "1 of 1 benchmarks regressed (FPB)"
        r = records[0]
        word = {"fail": "regressed" if r.delta < 0 else "failed", "error": "errored"}.get(r.outcome, r.outcome)
        return f"{safe(r.title)} {word}{own_note}"
    parts: list[str] = []
    verb = "regressed" if all(r.delta < 0 for r in failed) else "failed"
    for word, group in (("errored", errored), (verb, failed)):
        if group:
            names = ", ".join(safe(r.title) for r in group[:4]) + (", ..." if len(group) > 4 else "")
            count = f"{len(group)}" if parts else f"{len(group)} of {total} {noun}"
            parts.append(f"{count} {word} ({names})")
    if unsure:
        parts.append(f"{unsure} inconclusive" if parts else f"{unsure} of {total} {noun} inconclusive")
    return ", ".join(parts) + own_note


# --- meta ------------------------------------------------------------------------------------


def make_meta(
    *,
    started: float | _dt.datetime | None = None,
    finished: float | _dt.datetime | None = None,
    backend: str | None = None,
    base: str | None = None,
    adapter: str | None = None,
    candidate: str | None = None,
    confidence: float | None = None,
    limit: int | None = None,
    mode: str | None = None,
    strict: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``meta`` object of the reports. Times are epoch seconds or datetimes (UTC assumed)."""
    meta: dict[str, Any] = {
        "ftgate": _version(),
        "started": _iso(started),
        "finished": _iso(finished if finished is not None else _dt.datetime.now(_dt.timezone.utc)),
        "backend": backend,
        "base": base,
        "adapter": adapter,
        "candidate": candidate,
        "confidence": confidence,
        "limit": limit,
        "mode": mode,
        "strict": strict,
    }
    meta.update(extra)
    return meta


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-ftgate")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


def _iso(moment: float | _dt.datetime | None) -> str | None:
    if moment is None:
        return None
    if not isinstance(moment, _dt.datetime):
        moment = _dt.datetime.fromtimestamp(float(moment), _dt.timezone.utc)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.astimezone(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- JSON ------------------------------------------------------------------------------------


def to_json(records: Sequence[GateRecord], *, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report as a dict (schema in the module docstring)."""
    counts = {key: sum(r.outcome == key for r in records) for key in _OUTCOMES}
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "meta": dict(meta) if meta is not None else make_meta(),
        "summary": {
            "gates": len(records),
            "passed": counts["pass"],
            "failed": counts["fail"],
            "inconclusive": counts["inconclusive"],
            "measured": counts["measured"],
            "errors": counts["error"],
            "outcome": overall_outcome(records),
        },
        "gates": [record.to_dict() for record in records],
    }


def write_json(
    path: str | os.PathLike[str], records: Sequence[GateRecord], *, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write the JSON report atomically (temporary file, then ``os.replace``); parents are created."""
    import json

    data = to_json(records, meta=meta)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n"
    return _atomic_write(Path(path), text.encode("utf-8"))


def load_json(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[GateRecord]]:
    """Read a report written by ``write_json``: ``(meta, records)``. Checks schema and version."""
    import json

    where = Path(path)
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read ftgate report {where}: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ConfigError(f'{where} is not an ftgate report (no "schema": "{SCHEMA}")')
    if data.get("version") != SCHEMA_VERSION:
        raise ConfigError(
            f"{where} has report version {data.get('version')!r}; this pytest-ftgate reads version "
            f"{SCHEMA_VERSION}: upgrade pytest-ftgate or regenerate the report"
        )
    return dict(data.get("meta", {})), [GateRecord.from_dict(gate) for gate in data.get("gates", [])]


def _atomic_write(path: Path, payload: bytes) -> Path:
    """Write ``payload`` to a temporary file beside ``path``, then ``os.replace`` it: a reader never
    sees half a report. The file gets the usual permissions (umask), unlike ``mkstemp``'s 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("xb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


# --- terminal --------------------------------------------------------------------------------


_OUTCOME_MARKUP = {
    "pass": {"green": True},
    "fail": {"red": True, "bold": True},
    "inconclusive": {"yellow": True},
    "measured": {"cyan": True},
    "error": {"red": True, "bold": True},
}


def summary_lines(records: Sequence[GateRecord], *, markup: bool) -> list[tuple[str, dict[str, bool]]]:
    """The lines of the terminal summary (table, headline, errors, baseline notes, advice), each
    with its markup. Text from data and models is escaped (``safe``).

    ``markup=False`` gives empty markup dicts (a terminal without colour, or ``--color=no``).
    """
    if not records:
        return []
    conf = records[0].confidence
    ci_head = f"{conf:.0%} CI" if all(r.confidence == conf for r in records) else "CI"
    header = ["benchmark", "base", "tuned", "delta", ci_head, "n", "verdict", "time"]
    labels = _labels(records)
    rows = []
    for label, r in zip(labels, records):
        if r.outcome == "error":  # no numbers: the comparison could not be computed
            rows.append([label, "-", "-", "-", "-", "-", "error", "-"])
            continue
        verdict = r.outcome
        if r.test_outcome == "failed" and r.outcome != "fail":
            verdict += " (test failed)"
        rows.append(
            [
                label,
                f"{r.base:.1f}",
                f"{r.tuned:.1f}",
                _signed(r.delta),
                f"[{_signed(r.ci[0])}, {_signed(r.ci[1])}]",
                str(r.n),
                verdict,
                _duration(r.seconds),
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {1, 2, 3, 5, 7}

    def fmt(cells: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    def mk(**kw: bool) -> dict[str, bool]:
        return dict(kw) if markup else {}

    lines: list[tuple[str, dict[str, bool]]] = [(fmt(header), mk(bold=True))]
    for r, row in zip(records, rows):
        colour = "fail" if r.test_outcome == "failed" else r.outcome
        lines.append((fmt(row), mk(**_OUTCOME_MARKUP.get(colour, {}))))
    overall = overall_outcome(records)
    lines.append(("", {}))
    lines.append((f"ftgate: {headline(records)}", mk(**_OUTCOME_MARKUP[overall])))
    for r in records:
        if r.error is not None:
            lines.append((f"ftgate: {safe(r.nodeid)} errored: {safe(r.error)}", mk(**_OUTCOME_MARKUP["error"])))
    for label, r in zip(labels, records):
        if r.baseline_note:
            lines.append((f"ftgate: {label}: {safe(r.baseline_note)}", {}))
    models = _models_line(records)
    if models:
        lines.append((models, {}))
    firsts = _first_per_benchmark(records)
    if firsts:
        lines.append(("decision framework (seed study), by baseline:", {}))
        width = max(len(safe(r.title)) for r in firsts)
        for r in firsts:
            lines.append((f"  {safe(r.title).ljust(width)}  {advice(r.base)}; measured: {outcome_note(r)}", {}))
    return lines


def _first_per_benchmark(records: Sequence[GateRecord]) -> list[GateRecord]:
    """The decision framework is about a benchmark, not a test: one record per benchmark (with
    numbers: errored gates have none)."""
    seen: dict[str, GateRecord] = {}
    for r in records:
        if r.outcome != "error":
            seen.setdefault(r.benchmark, r)
    return list(seen.values())


def write_summary(
    writer: Any,
    records: Sequence[GateRecord],
    *,
    title: str = "ftgate",
    written: Sequence[tuple[str, str]] = (),
    errors: Sequence[str] = (),
) -> None:
    """Print the summary through a pytest-like terminal writer (``.sep``, ``.line``, ``.hasmarkup``)
    or pytest's ``TerminalReporter`` (``.write_sep`` instead of ``.sep``).

    ``written``: ``(what, path)`` pairs of report files, listed at the end (``("JSON report",
    "out/ftgate.json")``); ``errors``: lines about files that could not be written (shown in red).
    Nothing is printed when there are no records, files or errors.
    """
    if not records and not written and not errors:
        return
    markup = bool(getattr(writer, "hasmarkup", False))
    sep = writer.sep if hasattr(writer, "sep") else writer.write_sep
    sep("=", title, **({"bold": True} if markup else {}))
    for text, kw in summary_lines(records, markup=markup):
        writer.line(text, **kw)
    for what, path in written:
        writer.line(f"ftgate: {what} written to {safe(path)}")
    for error in errors:
        writer.line(f"ftgate: {safe(error)}", **({"red": True} if markup else {}))


def _labels(records: Sequence[GateRecord]) -> list[str]:
    """Benchmark titles (escaped); when a benchmark has several gates, the test name tells them apart."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.benchmark] = counts.get(r.benchmark, 0) + 1
    labels = []
    for r in records:
        if counts[r.benchmark] == 1:
            labels.append(r.title)
        else:
            test = r.nodeid.rsplit("::", 1)[-1].split("[", 1)[0]
            labels.append(f"{r.title} ({test})")
    if len(set(labels)) != len(labels):  # same test name in several files
        labels = [f"{r.title} ({r.nodeid})" for r in records]
    return [safe(label) for label in labels]


def _models_line(records: Sequence[GateRecord]) -> str:
    bases = {r.base_model for r in records if r.base_model}
    tuneds = {r.tuned_model for r in records if r.tuned_model}
    if len(bases) == 1 and len(tuneds) == 1:
        return safe(f"base {next(iter(bases))} vs tuned {next(iter(tuneds))}")
    return ""


# --- Markdown --------------------------------------------------------------------------------

_OUTCOME_ICON = {
    "pass": "\u2705",
    "fail": "\u274c",
    "inconclusive": "\u26a0\ufe0f",
    "measured": "\U0001f4cf",  # a ruler: measured, not gated
    "error": "\u274c",
}
_EMPTY_REPLY = "<i>(empty reply)</i>"
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#])")


def to_markdown(records: Sequence[GateRecord], *, meta: Mapping[str, Any] | None = None) -> str:
    """A GitHub-flavoured Markdown summary for ``$GITHUB_STEP_SUMMARY`` or a pull-request comment.

    A headline with the overall verdict, a red CAUTION alert with the error text of each gate
    that errored, the table, notes about stored baselines, the decision framework per benchmark,
    and a collapsed block with the top lost examples for each gate that did not pass. Text from
    data and models is escaped (control characters, HTML, Markdown punctuation, line breaks).
    """
    meta = dict(meta or {})
    overall = overall_outcome(records)
    out = [f"### {_OUTCOME_ICON[overall]} ftgate: {_md_escape(headline(records))}", ""]
    context = _md_context(records, meta)
    if context:
        out += [context, ""]
    if not records:
        return "\n".join(out).rstrip() + "\n"

    for r in records:
        if r.error is not None:
            out += ["> [!CAUTION]", f"> `{_code(r.nodeid)}` errored: {_md_escape(r.error)}", ""]

    labels = _labels(records)
    conf = records[0].confidence
    ci_head = f"{conf:.0%} CI" if all(r.confidence == conf for r in records) else "CI"
    out.append(f"| Benchmark | Base | Tuned | \u0394 | {ci_head} | n | Verdict |")
    out.append("|:--|--:|--:|--:|:-:|--:|:--|")
    for label, r in zip(labels, records):
        if r.outcome == "error":
            none = " | ".join(["\u2014"] * 5)
            out.append(f"| {_cell(label)} | {none} | {_OUTCOME_ICON['error']} error |")
            continue
        delta = _signed(r.delta)
        if r.outcome == "fail":
            delta = f"**{delta}**"
        verdict = f"{_OUTCOME_ICON.get(r.outcome, '')} {r.outcome}"
        rule = _rule(r) or ("no threshold" if r.outcome == "measured" else "")
        if rule:
            verdict += f" ({rule})"
        if r.test_outcome == "failed" and r.outcome != "fail":
            verdict += ", test failed"
        out.append(
            f"| {_cell(label)} | {r.base:.1f} | {r.tuned:.1f} | {delta} | "
            f"{_signed(r.ci[0])} to {_signed(r.ci[1])} | {r.n} | {_cell(verdict)} |"
        )
    out.append("")

    notes = [(label, r.baseline_note) for label, r in zip(labels, records) if r.baseline_note]
    if notes:
        out += ["**Stored baselines**", ""]
        out += [f"- {_cell(label)}: {_cell(note)}" for label, note in notes]
        out.append("")

    firsts = _first_per_benchmark(records)
    if firsts:
        out.append("**Decision framework** (seed study: the baseline decides how hard to fine-tune)")
        out.append("")
        out.append("| Benchmark | Baseline | Advice | Measured outcome |")
        out.append("|:--|--:|:--|:--|")
        for r in firsts:
            out.append(f"| {_cell(r.title)} | {r.base:.1f} | {_cell(advice(r.base))} | {_cell(outcome_note(r))} |")
        out.append("")

    for label, r in zip(labels, records):
        if r.outcome in ("pass", "error"):  # an error is in its CAUTION alert above
            continue
        icon = _OUTCOME_ICON.get(r.outcome, "")
        shown = f"; first {len(r.top_lost)} lost below" if r.top_lost and r.lost > len(r.top_lost) else ""
        summary = f"{icon} {label}: {r.lost} examples lost, {r.gained} gained{shown}"
        out.append(f"<details><summary>{html.escape(summary)}</summary>")
        out.append("")
        if r.reason:
            out.append(_md_escape(" ".join(r.reason.split())))
            out.append("")
        if r.top_lost:
            out.append("| Lost example | Gold | Base | Tuned |")
            out.append("|:--|:--|:--|:--|")
            for ex in r.top_lost:
                out.append(
                    f"| {_cell(ex.text, 200)}<br><sub>{_cell(ex.id, 60)}</sub> | {_cell(ex.gold, 40)} | "
                    f"{_cell(ex.base_output, 80, empty=_EMPTY_REPLY)} | {_cell(ex.tuned_output, 80, empty=_EMPTY_REPLY)} |"
                )
        else:
            out.append("No example was lost.")
        out.append("")
        out.append("</details>")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_markdown(
    path: str | os.PathLike[str],
    records: Sequence[GateRecord],
    *,
    meta: Mapping[str, Any] | None = None,
    append: bool | None = None,
) -> Path:
    """Write the Markdown summary. ``append=None`` appends when ``path`` is ``$GITHUB_STEP_SUMMARY``
    (that file collects every step's summary), and otherwise replaces the file atomically."""
    target = Path(path)
    text = to_markdown(records, meta=meta)
    if append is None:
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        append = summary is not None and summary != "" and _same_path(target, Path(summary))
    if append:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as handle:
            handle.write(text)
        return target
    return _atomic_write(target, text.encode("utf-8"))


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _md_context(records: Sequence[GateRecord], meta: Mapping[str, Any]) -> str:
    base = meta.get("base") or next((r.base_model for r in records if r.base_model), None)
    tuned = (
        meta.get("adapter") or meta.get("candidate") or next((r.tuned_model for r in records if r.tuned_model), None)
    )
    kind = "adapter" if meta.get("adapter") else "candidate" if meta.get("candidate") else "tuned"
    parts = []
    if base and tuned:
        parts.append(f"Base `{_code(base)}` vs {kind} `{_code(tuned)}`")
    elif base:
        parts.append(f"Base `{_code(base)}`")
    if meta.get("backend"):
        parts.append(f"backend {_md_escape(str(meta['backend']))}")
    modes = sorted({r.mode for r in records})
    if modes:
        parts.append(f"{'/'.join(modes)} mode")
    if meta.get("limit"):
        parts.append(f"limit {meta['limit']} examples per benchmark")
    if records:
        parts.append(f"{_duration(sum(r.seconds for r in records))} of evaluation")
    return " \u00b7 ".join(parts)


def _rule(r: GateRecord) -> str:
    rules = []
    if r.max_drop is not None:
        rules.append(f"max drop {r.max_drop:g}")
    if r.min_gain is not None:
        rules.append(f"min gain {r.min_gain:g}")
    if rules and r.strict:
        rules.append("strict")
    return ", ".join(rules)


def _md_escape(text: str) -> str:
    """One line with control characters (line breaks too) escaped (``safe``), then Markdown
    punctuation and HTML, so that model output and data show as written."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(safe(text), quote=False))


def _cell(text: str, width: int | None = None, *, empty: str = "\u2014") -> str:
    """A table cell: clipped, escaped (pipes, HTML, emphasis), line breaks as ``<br>``.

    An empty value shows as ``empty`` (a bare empty cell reads as missing data)."""
    text = safe(str(text).replace("\r\n", "\n").replace("\r", "\n").strip(), newlines=True)
    if width is not None and len(text) > width:
        text = text[: width - 1].rstrip() + "\u2026"
    lines = [_md_escape(" ".join(line.split())) for line in text.split("\n")]
    return "<br>".join(line for line in lines if line) or empty


def _code(text: str) -> str:
    """Text for inside backticks: a backtick cannot end the span early, control characters escaped."""
    return safe(text).replace("`", "'")


# --- PNG chart -------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Raise ``ConfigError`` with the install command when matplotlib is missing.

    Call it when ``--ftgate-plot`` is given (at configure time), so the user learns before a long
    evaluation rather than after it.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(f"--ftgate-plot needs matplotlib, which is not installed: {PLOT_INSTALL_HINT}") from None


_BASE_COLOR = "#9aa5b1"  # grey: before
_TUNED_COLOR = "#2f6db5"  # blue: after
_OUTCOME_COLOR = {"pass": "#1a7f37", "fail": "#cf222e", "inconclusive": "#9a6700"}
_FLOOR_COLOR = "#cf222e"
_TARGET_COLOR = "#1a7f37"


def write_plot(
    path: str | os.PathLike[str],
    records: Sequence[GateRecord],
    *,
    title: str = "Baseline vs after fine-tuning",
    dpi: int = 150,
) -> Path:
    """PNG: grouped bars, base vs tuned per benchmark, like the seed study's figure.

    The tuned bar carries the paired interval as a whisker (``base + ci``); a dashed red line marks
    the allowed floor (``base - max_drop``) and a dashed green one the required score
    (``base + min_gain``) where the marker sets them. Values are printed on the bars; each
    benchmark's verdict and delta sit under its name. Renders with the Agg canvas (no pyplot, no
    global backend change). Raises ``ConfigError`` naming the install command without matplotlib.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    groups = _plot_groups(records)
    count = max(len(groups), 1)
    fig_width, fig_height = max(5.0, 1.9 * count + 1.6), 5.0
    fig = Figure(figsize=(fig_width, fig_height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.36
    top = 0.0
    floors = targets = False
    for i, g in enumerate(groups):
        x_base, x_tuned = i - width / 2, i + width / 2
        ax.bar(x_base, g.base, width, color=_BASE_COLOR, edgecolor="white", linewidth=0.8, zorder=2)
        ax.bar(x_tuned, g.tuned, width, color=_TUNED_COLOR, edgecolor="white", linewidth=0.8, zorder=2)
        low = max(0.0, g.base + g.ci[0])
        high = min(100.0, g.base + g.ci[1])
        ax.errorbar(
            x_tuned,
            g.tuned,
            yerr=[[max(g.tuned - low, 0.0)], [max(high - g.tuned, 0.0)]],
            fmt="none",
            ecolor="#1f2328",
            elinewidth=1.2,
            capsize=5,
            capthick=1.2,
            zorder=4,
        )
        for x, value, above in ((x_base, g.base, g.base), (x_tuned, g.tuned, high)):
            ax.annotate(
                f"{value:.1f}",
                (x, above),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=9,
                color="#1f2328",
                zorder=5,
            )
        top = max(top, g.base, high)
        span = (x_tuned - width / 2 - 0.07, x_tuned + width / 2 + 0.07)  # the rule is for the tuned score
        if g.floor is not None:
            ax.hlines(g.floor, *span, colors=_FLOOR_COLOR, linestyles="--", linewidth=1.6, zorder=3)
            floors = True
        if g.target is not None:
            ax.hlines(g.target, *span, colors=_TARGET_COLOR, linestyles="--", linewidth=1.6, zorder=3)
            top = max(top, g.target)
            targets = True

    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g.label for g in groups], fontsize=10)
    for tick, g in zip(ax.get_xticklabels(), groups):
        tick.set_color("#1f2328")
    for i, g in enumerate(groups):
        ax.annotate(
            f"{g.outcome.upper()}  {_signed(g.delta)}",
            (i, 0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -30),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=9,
            fontweight="bold",
            color=_OUTCOME_COLOR.get(g.outcome, "#1f2328"),
        )
    ax.set_xlim(-0.75, len(groups) - 0.25)
    ax.set_ylim(0, min(100.0, top) * 1.12 + 2 if top > 0 else 10)
    ax.set_ylabel("score (points)")
    ax.set_title(title, fontsize=13, fontweight="bold", pad=12)
    ax.yaxis.grid(True, color="#d0d7de", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    conf = records[0].confidence if records else 0.95
    handles: list[Any] = [
        Patch(color=_BASE_COLOR, label="base"),
        Patch(color=_TUNED_COLOR, label=f"tuned ({conf:.0%} interval)"),
    ]
    if floors:
        handles.append(Line2D([], [], color=_FLOOR_COLOR, linestyle="--", label="allowed floor (base \u2212 max_drop)"))
    if targets:
        handles.append(Line2D([], [], color=_TARGET_COLOR, linestyle="--", label="required (base + min_gain)"))
    ncol = len(handles) if fig_width >= 2.0 * len(handles) else 2
    rows = -(-len(handles) // ncol)
    if not groups:
        empty = "no comparison could be computed" if records else "no gates ran"
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="#57606a")
    subtitle = _models_line(records)
    reserve = (0.28 * rows + 0.12 + (0.22 if subtitle else 0.0)) / fig_height  # legend and subtitle, below
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, (0.22 if subtitle else 0.04) / fig_height),
        ncol=ncol,
        frameon=False,
        fontsize=9,
    )
    if subtitle:
        fig.text(0.01, 0.04 / fig_height, subtitle, fontsize=7.5, color="#57606a", ha="left", va="bottom")
    fig.tight_layout(rect=(0, reserve, 1, 1))

    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return _atomic_write(Path(path), buffer.getvalue())


@dataclass
class _Group:
    label: str
    base: float
    tuned: float
    delta: float
    ci: tuple[float, float]
    outcome: str
    floor: float | None
    target: float | None


def _plot_groups(records: Sequence[GateRecord]) -> list[_Group]:
    """One bar group per benchmark; several gates on one benchmark share it with the tightest
    thresholds and the worst verdict. Errored gates have no numbers to draw."""
    order: list[str] = []
    groups: dict[str, _Group] = {}
    rank = {"measured": 0, "pass": 0, "inconclusive": 1, "fail": 2}
    for r in records:
        if r.outcome == "error":
            continue
        floor = None if r.max_drop is None else r.base - r.max_drop
        target = None if r.min_gain is None else r.base + r.min_gain
        g = groups.get(r.benchmark)
        if g is None:
            order.append(r.benchmark)
            groups[r.benchmark] = _Group(r.title, r.base, r.tuned, r.delta, r.ci, r.outcome, floor, target)
            continue
        if floor is not None:
            g.floor = floor if g.floor is None else max(g.floor, floor)
        if target is not None:
            g.target = target if g.target is None else max(g.target, target)
        if rank.get(r.outcome, 0) > rank.get(g.outcome, 0):
            g.outcome = r.outcome
    return [groups[name] for name in order]


# --- JUnit XML -------------------------------------------------------------------------------


def junit_properties(record: GateRecord) -> list[tuple[str, str]]:
    """``(name, value)`` pairs for ``record_property`` / ``item.user_properties`` (JUnit XML).
    An errored gate has ``ftgate_verdict`` ``error`` and ``ftgate_error``, and no numbers."""
    if record.outcome == "error":
        return [
            ("ftgate_benchmark", safe(record.benchmark)),
            ("ftgate_verdict", "error"),
            ("ftgate_error", safe(record.error or "")),
        ]
    note = [("ftgate_baseline", safe(record.baseline_note))] if record.baseline_note else []
    return [
        ("ftgate_benchmark", safe(record.benchmark)),
        ("ftgate_base", f"{record.base:.2f}"),
        ("ftgate_tuned", f"{record.tuned:.2f}"),
        ("ftgate_delta", f"{record.delta:+.2f}"),
        ("ftgate_ci_low", f"{record.ci[0]:+.2f}"),
        ("ftgate_ci_high", f"{record.ci[1]:+.2f}"),
        ("ftgate_n", str(record.n)),
        ("ftgate_lost", str(record.lost)),
        ("ftgate_gained", str(record.gained)),
        ("ftgate_p_value", f"{record.p_value:.4g}"),
        ("ftgate_verdict", record.outcome),
        *note,
    ]


# --- helpers ---------------------------------------------------------------------------------


def _signed(x: float) -> str:
    text = f"{x:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


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
