"""Stored baselines: the base model's results kept as syrupy JSON snapshots beside the tests.

A baseline holds a benchmark's base score and metrics, each example's parsed answer, correctness
and output (clipped where the clip keeps the answer), and the fingerprint of everything that
produced it: the base model's weights, config, tokenizer and chat template, the backend and its
version, the benchmark's prompt and parsing, the generation settings and the examples (ids,
prompts, gold answers). With a stored baseline whose fingerprint matches, the base model is not
evaluated on the whole benchmark; one whose fingerprint differs fails the test and names what
changed. A missing baseline is recorded on the first run; ``--snapshot-update`` (syrupy's flag)
re-records.

A snapshot is a file a pull request can edit, so nothing in it is taken on trust:

- it is read before any model runs; a file that is not JSON, not an ftgate baseline, of another
  record version, or with a field of the wrong type or a non-finite number is an error;
- each answer is parsed again from its stored output (in ``logprob`` mode: the answer must be the
  one its stored log-probabilities choose), scored against the current gold answer, and the
  metrics and score recomputed; any disagreement is an error;
- a consistent edit (answers and score changed together) is found by the gate's audit, which
  evaluates a randomly drawn sample of the examples again with the base model
  (``Gate.audit_baseline``).

Every error names the file and says ``pytest --snapshot-update``. Files:
``__snapshots__/<test file>/<test name>[<benchmark>].json``, one small sorted JSON document each,
so a baseline change reads well in a git diff; the summary says when one was recorded or changed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from syrupy.exceptions import SnapshotDoesNotExist
from syrupy.extensions.json import JSONSnapshotExtension

from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.errors import BaselineMismatch
from pytest_ftgate.fingerprint import digest
from pytest_ftgate.modes import MODES
from pytest_ftgate.results import EvalResult, ModelInfo, Prediction

if TYPE_CHECKING:
    from syrupy.assertion import SnapshotAssertion

    from pytest_ftgate.gate import Gate
    from pytest_ftgate.results import Comparison
    from pytest_ftgate.stats import EarlyStopPolicy

__all__ = ["BaselineMismatch", "FtgateSnapshotExtension", "SnapshotStore", "compare_with_baseline"]

# 2: outputs are kept whole where the clip would change their answer; the examples' fingerprint
# covers their prompts and gold answers. A record of another version is re-recorded, never read.
RECORD_VERSION = 2
OUTPUT_CLIP = 200
UPDATE = "run pytest --snapshot-update to re-record it"
_FIELDS = {"ftgate_baseline", "benchmark", "model", "fingerprint", "mode", "n", "score", "metrics", "predictions"}
_SHOWN = 3  # problems listed per error

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


class FtgateSnapshotExtension(JSONSnapshotExtension):
    """syrupy's JSON extension, comparing documents rather than their formatting."""

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        try:
            return bool(json.loads(serialized_data) == json.loads(snapshot_data))
        except (TypeError, ValueError):
            return bool(super().matches(serialized_data=serialized_data, snapshot_data=snapshot_data))


# -- the record ------------------------------------------------------------------------------


def baseline_record(result: EvalResult, fingerprint: dict[str, str], benchmark: Benchmark) -> dict[str, Any]:
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
        "predictions": {p.id: _prediction_record(p, benchmark) for p in result.predictions},
    }


def _prediction_record(prediction: Prediction, benchmark: Benchmark) -> dict[str, Any]:
    # The output is clipped to keep the file small, except where the clip would parse to another
    # answer (a reply longer than OUTPUT_CLIP whose deciding text comes late): then it is kept
    # whole, so that every stored answer can be parsed again from the stored output.
    clipped = prediction.output[:OUTPUT_CLIP]
    record: dict[str, Any] = {
        "correct": prediction.correct,
        "parsed": prediction.parsed,
        "output": clipped if benchmark.parse(clipped) == prediction.parsed else prediction.output,
    }
    if prediction.logprobs is not None:
        record["logprobs"] = {k: round(v, 6) for k, v in prediction.logprobs.items()}
    return record


def read_record(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse a stored baseline and check its shape and types (not yet its content)."""
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise BaselineMismatch(f"stored baseline {where} is not valid JSON ({exc}): {UPDATE}") from None
    if not isinstance(record, dict) or "ftgate_baseline" not in record:
        raise BaselineMismatch(f"{where} is not an ftgate baseline (no ftgate_baseline field): {UPDATE}")
    version = record["ftgate_baseline"]
    if version != RECORD_VERSION or not isinstance(version, int) or isinstance(version, bool):
        raise BaselineMismatch(
            f"stored baseline {where} has record version {version!r}; this pytest-ftgate reads "
            f"version {RECORD_VERSION}: {UPDATE}"
        )
    problems = []
    if set(record) != _FIELDS:
        missing, extra = sorted(_FIELDS - set(record)), sorted(set(record) - _FIELDS)
        problems.append(f"fields missing {missing}, unexpected {extra}")
    else:
        checks = {
            "benchmark": isinstance(record["benchmark"], str),
            "model": isinstance(record["model"], str),
            "fingerprint": _str_dict(record["fingerprint"]),
            "mode": record["mode"] in MODES,
            "n": isinstance(record["n"], int) and not isinstance(record["n"], bool),
            "score": _finite(record["score"]),
            "metrics": isinstance(record["metrics"], dict) and all(map(_finite, record["metrics"].values())),
            "predictions": isinstance(record["predictions"], dict)
            and all(isinstance(p, dict) for p in record["predictions"].values()),
        }
        problems += [f"{name} = {_short(record[name])} has the wrong type" for name, ok in checks.items() if not ok]
    if problems:
        raise BaselineMismatch(f"stored baseline {where} is damaged: {'; '.join(problems)}: {UPDATE}")
    return record


def result_from_record(
    record: dict[str, Any], benchmark: Benchmark, examples: list[Example], where: str = "(snapshot)"
) -> EvalResult:
    """Rebuild the base ``EvalResult`` from a stored baseline (read by ``read_record``) without
    running a model: every answer is parsed again from its stored output and scored against the
    current gold answer, and the metrics are recomputed. Any disagreement with what the record
    says raises BaselineMismatch naming the file."""
    stored: dict[str, Any] = record["predictions"]
    ids = [e.id for e in examples]
    problems = []
    if record["benchmark"] != benchmark.name:
        problems.append(f"it is for benchmark {record['benchmark']!r}, not {benchmark.name!r}")
    missing, extra = [i for i in ids if i not in stored], sorted(set(stored) - set(ids))
    if missing or extra or record["n"] != len(ids):
        problems.append(
            f"it lists {len(stored)} examples (n = {record['n']}) where the benchmark has {len(ids)}: "
            f"missing {_ids(missing)}, extra {_ids(extra)}"
        )
    if problems:
        raise BaselineMismatch(f"stored baseline {where} does not match the benchmark: {'; '.join(problems)}: {UPDATE}")
    mode = record["mode"]
    predictions, wrong = [], []
    for example in examples:
        prediction, problem = _rebuild(stored[example.id], example, benchmark, mode)
        if problem:
            wrong.append(f"{example.id!r} {problem}")
        predictions.append(prediction)
    metrics = benchmark.metrics(predictions) if not wrong else {}
    if not wrong:
        if set(metrics) != set(record["metrics"]):
            wrong.append(f"metrics {sorted(record['metrics'])} where the benchmark computes {sorted(metrics)}")
        wrong += [
            f"{name} {record['metrics'][name]} where its answers give {round(value, 6)}"
            for name, value in metrics.items()
            if name in record["metrics"] and not _same(record["metrics"][name], value)
        ]
        if not _same(record["score"], metrics[benchmark.primary_metric]):
            score = round(metrics[benchmark.primary_metric], 6)
            wrong.append(f"score {record['score']} where its answers give {score}")
    if wrong:
        shown = "; ".join(wrong[:_SHOWN]) + (f"; and {len(wrong) - _SHOWN} more" if len(wrong) > _SHOWN else "")
        raise BaselineMismatch(
            f"stored baseline {where} contradicts its own answers scored against the current gold "
            f"answers: {shown}. It was edited, or the data or parsing changed: {UPDATE}"
        )
    return EvalResult(
        benchmark=benchmark.name,
        model=ModelInfo(record["model"], digest(record["fingerprint"])),
        n=len(predictions),
        score=metrics[benchmark.primary_metric],
        metrics=metrics,
        predictions=predictions,
        seconds=0.0,
        title=benchmark.title,
        mode=mode,
        fingerprint=benchmark.fingerprint(),
    )


def _rebuild(stored: dict[str, Any], example: Example, benchmark: Benchmark, mode: str) -> tuple[Prediction, str]:
    """The prediction a stored example record stands for, and what is wrong with the record ("" if nothing)."""
    fields = {"correct", "parsed", "output"} | ({"logprobs"} if mode == "logprob" else set())
    output, parsed, logprobs = stored.get("output"), stored.get("parsed"), stored.get("logprobs")
    if set(stored) != fields:
        problem = f"has fields {sorted(stored)}, expected {sorted(fields)}"
    elif not isinstance(output, str) or not (parsed is None or isinstance(parsed, str)):
        problem = f"has output {_short(output)} and answer {_short(parsed)}: text expected"
    elif not isinstance(stored["correct"], bool):
        problem = f"has correct = {_short(stored['correct'])}: true or false expected"
    elif mode == "logprob" and not (
        _str_dict(logprobs, _finite) and set(logprobs) == set(benchmark.answer_forms())
    ):
        problem = f"has log-probabilities {_short(logprobs)}: a finite number per answer expected"
    elif mode == "logprob" and logprobs.get(output, -math.inf) < max(logprobs.values()):
        problem = f"answers {output!r}, but its stored log-probabilities choose {max(logprobs, key=logprobs.get)!r}"
    elif benchmark.parse(output) != parsed:
        problem = f"stores the answer {parsed!r}, but its output {_short(output)} parses to {benchmark.parse(output)!r}"
    elif benchmark.is_correct(parsed, example.gold) != stored["correct"]:
        problem = (
            f"is stored as {'correct' if stored['correct'] else 'wrong'}, but its answer {parsed!r} "
            f"{'is not' if stored['correct'] else 'is'} correct for the gold answer {example.gold!r}"
        )
    else:
        problem = ""
    if problem:
        return Prediction(example.id, "", None, example.gold, False, example.text), problem
    prediction = benchmark.prediction(example, output)
    if logprobs is not None:
        prediction = Prediction(**{**prediction.__dict__, "logprobs": dict(logprobs)})
    return prediction, ""


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _str_dict(value: Any, check: Callable[[Any], bool] = lambda v: isinstance(v, str)) -> bool:
    """A JSON object whose values pass ``check`` (text by default)."""
    return isinstance(value, dict) and all(isinstance(k, str) and check(v) for k, v in value.items())


def _same(stored: float, computed: float) -> bool:
    return math.isclose(stored, round(computed, 6), rel_tol=0.0, abs_tol=1e-9)


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, allow_nan=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def _ids(ids: list[str]) -> str:
    return ("[" + ", ".join(map(repr, ids[:_SHOWN])) + (", ..." if len(ids) > _SHOWN else "") + "]") if ids else "none"


def mismatch_message(stored: dict[str, str], expected: dict[str, str], where: str) -> str:
    changed = [_PARTS.get(k, k) for k in sorted(set(stored) | set(expected)) if stored.get(k) != expected.get(k)]
    return (
        f"baseline was recorded for another {' and another '.join(changed) or 'setup'}: "
        f"run pytest --snapshot-update to re-record it ({where})"
    )


# -- the store -------------------------------------------------------------------------------


class SnapshotStore:
    """One test's stored baselines: syrupy JSON snapshots, one per benchmark and scoring mode.

    The first run records (syrupy's ``update_new_snapshots_only``); a stored one changes only with
    ``--snapshot-update``. Every baseline a test uses is asserted, so syrupy never sees it unused.
    """

    def __init__(self, snapshot: SnapshotAssertion) -> None:
        from syrupy.assertion import SnapshotAssertion

        self._assertion = SnapshotAssertion(
            session=snapshot.session,
            extension_class=FtgateSnapshotExtension,
            test_location=snapshot.test_location,
            update_snapshots=snapshot.update_snapshots,
            update_new_snapshots_only=True,
        )

    @property
    def updating(self) -> bool:
        """Whether ``--snapshot-update`` was given: stored baselines are re-recorded, not read."""
        return bool(self._assertion.update_snapshots)

    def location(self, name: str) -> str:
        """The snapshot file, relative to the current folder when it lies below it."""
        path = self._assertion.extension.get_location(test_location=self._assertion.test_location, index=name)
        relative = os.path.relpath(path)
        return path if relative.startswith("..") else relative

    def read(self, name: str) -> str | bytes | None:
        """The stored text, or None when there is none."""
        assertion = self._assertion
        try:
            return assertion.extension.read_snapshot(  # type: ignore[no-any-return]
                test_location=assertion.test_location, index=name, session_id=str(id(assertion.session))
            )
        except SnapshotDoesNotExist:
            return None

    def write(self, name: str, record: dict[str, Any]) -> bool:
        """Record (or, stored already, match) ``record``; False when a stored one differs."""
        return bool(self._assertion(name=name) == record)


def _stored_score(text: str | bytes) -> float | None:
    """The score a stored baseline claims, for the re-recording note (None: unreadable)."""
    try:
        score = json.loads(text).get("score")
    except (ValueError, AttributeError):
        return None
    return float(score) if _finite(score) else None


def compare_with_baseline(
    gate: Gate,
    benchmark: str,
    snapshot: SnapshotAssertion,
    mode: str | None = None,
    early_stop: EarlyStopPolicy | None = None,
) -> Comparison:
    """``gate.compare(benchmark)``, with the base side read from (or recorded to) a snapshot.

    The stored baseline is read and checked before any model runs; the gate audits it on use;
    ``comparison.baseline_note`` says what happened to it (audited, recorded, re-recorded).
    With a reference adapter (``Gate(reference=...)``) the snapshot is neither read nor written:
    the reference's side is evaluated.
    """
    if gate.reference is not None:  # adapter vs adapter: a stored baseline is the base's, never the reference's
        return gate.compare(benchmark, mode, early_stop=early_stop)
    store = SnapshotStore(snapshot)
    bench = gate.benchmark(benchmark)
    mode = gate.mode_for(bench, mode)
    name = bench.name if mode == "generate" else f"{bench.name}-{mode}"
    where = store.location(name)
    text = store.read(name)
    if text is not None and not store.updating:
        record = read_record(text, where)
        expected = gate.baseline_fingerprint(bench, mode)
        if record["fingerprint"] != expected:
            raise BaselineMismatch(mismatch_message(record["fingerprint"], expected, where))
        gate.use_baseline(bench, result_from_record(record, bench, gate.examples(bench), where), source=where)
    comparison = gate.compare(bench, mode, early_stop=early_stop)
    if comparison.base.n < len(gate.examples(bench)):
        if text is None or store.updating:  # stopped early without a stored baseline: nothing complete to record
            comparison.baseline_note = f"no baseline recorded in {where}: the run stopped early"
        return comparison
    if not store.write(name, baseline_record(comparison.base, gate.baseline_fingerprint(bench, mode), bench)):
        raise BaselineMismatch(f"the stored baseline {where} could not be written or matched: {UPDATE}")
    score = comparison.base.score
    if text is None:
        comparison.baseline_note = f"baseline recorded in {where}: {score:.1f}"
    elif store.updating:
        old = _stored_score(text)
        before = f"{old:.1f}" if old is not None else "unreadable"
        comparison.baseline_note = f"baseline re-recorded in {where} (--snapshot-update): {before} -> {score:.1f}"
    return comparison
