"""Stored baselines: the base model's results kept as syrupy JSON snapshots beside the tests.

A baseline holds a benchmark's base score and metrics, each example's parsed answer, correctness
and (clipped) output, and the fingerprint of everything that produced it: the base model's
weights, config, tokenizer and chat template, the backend and its version, the benchmark's prompt
and parsing, the generation settings and the example ids. With a stored baseline whose
fingerprint matches, the base model is not evaluated at all; one whose fingerprint differs fails
the test and names what changed. A missing baseline is recorded on the first run;
``--snapshot-update`` (syrupy's flag) re-records.

Files: ``__snapshots__/<test file>/<test name>[<benchmark>].json``, one small sorted JSON
document each, so a baseline change reads well in a git diff.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from syrupy.exceptions import SnapshotDoesNotExist
from syrupy.extensions.json import JSONSnapshotExtension

from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.errors import FtgateError
from pytest_ftgate.fingerprint import digest
from pytest_ftgate.results import EvalResult, ModelInfo, Prediction

if TYPE_CHECKING:
    from syrupy.assertion import SnapshotAssertion

    from pytest_ftgate.gate import Gate
    from pytest_ftgate.results import Comparison

RECORD_VERSION = 1
OUTPUT_CLIP = 200

# fingerprint part -> what "another ..." it means when it differs
_PARTS = {
    "weights": "base model (its weights differ)",
    "config": "model config",
    "tokenizer": "tokenizer",
    "chat_template": "chat template",
    "model": "base model",
    "backend": "backend or backend version",
    "benchmark": "prompt, parsing or benchmark version",
    "generation": "generation setting",
    "examples": "set of examples (--ftgate-limit or the data changed)",
}


class BaselineMismatch(FtgateError):
    """A stored baseline that was recorded for another model, prompt, setting or example set."""


class FtgateSnapshotExtension(JSONSnapshotExtension):
    """syrupy's JSON extension, comparing documents rather than their formatting."""

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        try:
            return bool(json.loads(serialized_data) == json.loads(snapshot_data))
        except (TypeError, ValueError):
            return bool(super().matches(serialized_data=serialized_data, snapshot_data=snapshot_data))


def baseline_record(result: EvalResult, fingerprint: dict[str, str]) -> dict[str, Any]:
    """The JSON document stored for a base result."""
    return {
        "ftgate_baseline": RECORD_VERSION,
        "benchmark": result.benchmark,
        "model": result.model.label,
        "fingerprint": fingerprint,
        "mode": result.mode,
        "n": result.n,
        "score": round(result.score, 6),
        "metrics": {k: round(v, 6) for k, v in result.metrics.items()},
        "predictions": {p.id: _prediction_record(p) for p in result.predictions},
    }


def _prediction_record(prediction: Prediction) -> dict[str, Any]:
    record: dict[str, Any] = {
        "correct": prediction.correct,
        "parsed": prediction.parsed,
        "output": prediction.output[:OUTPUT_CLIP],
    }
    if prediction.logprobs is not None:
        record["logprobs"] = {k: round(v, 6) for k, v in prediction.logprobs.items()}
    return record


def result_from_record(record: dict[str, Any], benchmark: Benchmark, examples: list[Example]) -> EvalResult:
    """Rebuild the base ``EvalResult`` from a stored baseline (no model is run)."""
    stored = record["predictions"]
    predictions = [
        Prediction(
            e.id,
            stored[e.id]["output"],
            stored[e.id]["parsed"],
            e.gold,
            stored[e.id]["correct"],
            e.text,
            stored[e.id].get("logprobs"),
        )
        for e in examples
    ]
    return EvalResult(
        benchmark=benchmark.name,
        model=ModelInfo(record["model"], digest(record["fingerprint"])),
        n=record["n"],
        score=record["score"],
        metrics=dict(record["metrics"]),
        predictions=predictions,
        seconds=0.0,
        title=benchmark.title,
        mode=record.get("mode", "generate"),
        fingerprint=benchmark.fingerprint(),
    )


def mismatch_message(stored: dict[str, str], expected: dict[str, str], where: str) -> str:
    changed = [_PARTS.get(k, k) for k in sorted(set(stored) | set(expected)) if stored.get(k) != expected.get(k)]
    return (
        f"baseline was recorded for another {' and another '.join(changed) or 'setup'}: "
        f"run pytest --snapshot-update to re-record it ({where})"
    )


def _read(assertion: SnapshotAssertion, name: str) -> dict[str, Any] | None:
    extension = assertion.extension
    try:
        data = extension.read_snapshot(
            test_location=assertion.test_location, index=name, session_id=str(id(assertion.session))
        )
    except SnapshotDoesNotExist:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None  # unreadable: re-recorded like a missing one
    return record if isinstance(record, dict) and record.get("ftgate_baseline") == RECORD_VERSION else None


def compare_with_baseline(
    gate: Gate,
    benchmark: str,
    snapshot: SnapshotAssertion,
    mode: str | None = None,
    early_stop: dict[str, Any] | None = None,
) -> Comparison:
    """``gate.compare(benchmark)``, with the base side read from (or recorded to) a snapshot."""
    from syrupy.assertion import SnapshotAssertion

    assertion = SnapshotAssertion(
        session=snapshot.session,
        extension_class=FtgateSnapshotExtension,
        test_location=snapshot.test_location,
        update_snapshots=snapshot.update_snapshots,
        update_new_snapshots_only=True,  # the first run records; a changed one needs --snapshot-update
    )
    bench = gate.benchmark(benchmark)
    mode = gate.mode_for(bench, mode)
    expected = gate.baseline_fingerprint(bench, mode)
    name = bench.name if mode == "generate" else f"{bench.name}-{mode}"
    stored = _read(assertion, name)
    if stored is not None and not assertion.update_snapshots:
        if stored.get("fingerprint") != expected:
            location = assertion.extension.get_location(test_location=assertion.test_location, index=name)
            raise BaselineMismatch(mismatch_message(stored.get("fingerprint") or {}, expected, location))
        gate.use_baseline(bench, result_from_record(stored, bench, gate.examples(bench)))
    comparison = gate.compare(bench, mode, early_stop=early_stop)
    if comparison.base.n < len(gate.examples(bench)):
        return comparison  # stopped early without a stored baseline: nothing complete to record
    if not assertion(name=name) == baseline_record(comparison.base, expected):
        raise BaselineMismatch(f"the stored {bench.title} baseline could not be written or matched")
    return comparison
