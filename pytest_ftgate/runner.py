"""Evaluate one model on one benchmark: cached records first, then batches through the backend.

In either scoring mode (``generate`` or ``logprob``; what they mean: :mod:`pytest_ftgate.modes`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

from pytest_ftgate.backends import Backend, Model, as_backend, check_scores
from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.cache import PredictionCache
from pytest_ftgate.context import check_context
from pytest_ftgate.errors import BackendError, NonFiniteError
from pytest_ftgate.modes import check_mode
from pytest_ftgate.progress import Reporter
from pytest_ftgate.results import EvalResult, ModelInfo, Prediction

DEFAULT_BATCH = 8  # examples per chunk when neither the user nor the backend says otherwise


def cache_key(benchmark: Benchmark, model: Model, mode: str) -> dict[str, Any]:
    key: dict[str, Any] = {"model": model.fingerprint, "benchmark": benchmark.fingerprint(), "mode": mode}
    if mode == "generate":
        key["max_tokens"] = benchmark.max_tokens
    else:
        key["forms"] = benchmark.answer_forms()
    return key


def _run_batch(
    benchmark: Benchmark,
    model: Model,
    chunk: Sequence[Example],
    mode: str,
    batch_size: int | None,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """One chunk of examples through the backend: a cache record per example. NaN or infinite
    logits or log-probabilities stop the run with a NonFiniteError naming the benchmark, the model
    and the example: they never become an answer. ``progress(done)`` goes to a backend whose
    method takes a ``progress`` keyword (see :mod:`pytest_ftgate.progress`)."""
    prompts = [benchmark.messages(e) for e in chunk]
    backend = as_backend(model.backend)
    extra: dict[str, Any] = {"progress": progress} if progress and backend.capabilities.progress else {}
    try:
        if mode == "generate":
            replies = backend.generate(
                model, prompts, max_tokens=benchmark.max_tokens, batch_size=batch_size,
                stop=benchmark.answer_decided, **extra,
            )  # fmt: skip
            return [{"output": reply} for reply in replies]
        return _score_batch(benchmark, backend, model, prompts, extra)
    except NonFiniteError as exc:
        raise _located(benchmark, chunk, exc) from None


def _located(benchmark: Benchmark, chunk: Sequence[Example], exc: NonFiniteError) -> NonFiniteError:
    """``exc`` (about row ``exc.index`` of ``chunk``) naming the benchmark and the example."""
    index = exc.index
    where = f", example {chunk[index].id}" if index is not None and 0 <= index < len(chunk) else ""
    return NonFiniteError(f"{benchmark.title}{where}: {exc}", exc.index)


def _score_batch(
    benchmark: Benchmark, backend: Backend, model: Model, prompts: list[list[dict[str, str]]], extra: dict[str, Any]
) -> list[dict[str, Any]]:
    forms = benchmark.answer_forms()
    flat = [form for variants in forms.values() for form in variants]
    if not backend.capabilities.logprob:
        raise BackendError(f"the {backend.name} backend cannot score log-probabilities: use mode='generate'")
    records = []
    for values in check_scores(model, backend.score(model, prompts, flat, **extra)):  # never an answer picked from NaN
        by_form = dict(zip(flat, values, strict=True))
        logprobs = {answer: _logsumexp([by_form[f] for f in variants]) for answer, variants in forms.items()}
        best = max(logprobs, key=lambda answer: logprobs[answer])
        records.append({"output": best, "logprobs": logprobs})
    return records


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def evaluate(
    benchmark: Benchmark,
    examples: Sequence[Example],
    model: Model,
    *,
    cache: PredictionCache,
    mode: str = "generate",
    batch_size: int | None = None,
    progress: Reporter | None = None,
    role: str = "model",
) -> EvalResult:
    """Run ``model`` on ``examples`` (resuming from ``cache``) and score the outputs. ``progress``
    hears of every batch, and of the backend's progress inside one where it reports it; ``role``
    names the side in its lines (``base``, ``tuned``)."""
    check_mode(mode, benchmark)
    key = cache_key(benchmark, model, mode)
    start = time.perf_counter()
    records = cache.get(key)
    todo = [e for e in examples if e.id not in records]
    check_context(benchmark, model, todo, mode)  # before the first batch: a DataError naming file:line

    def run(chunk: list[Example], inside: Callable[[int], None] | None) -> None:
        for example, record in zip(chunk, _run_batch(benchmark, model, chunk, mode, batch_size, inside), strict=True):
            records[example.id] = record
            cache.add(key, example.id, record)

    step = batch_size or as_backend(model.backend).default_batch_size or DEFAULT_BATCH
    _in_chunks(todo, len(examples), step, progress, f"{benchmark.title} {role} ({mode})", run)
    return _result(benchmark, examples, model, records, mode, time.perf_counter() - start)


def evaluate_sides(
    benchmark: Benchmark,
    examples: Sequence[Example],
    models: Sequence[Model],
    *,
    cache: PredictionCache,
    mode: str = "generate",
    batch_size: int | None = None,
    progress: Reporter | None = None,
    roles: Sequence[str] = ("base", "tuned"),
) -> list[EvalResult]:
    """``evaluate`` for each of ``models`` on the same examples, in one pass where the backend
    can (``capabilities.joint``: ``generate_sides`` decodes every model's rows in one batch):
    examples none of them has cached go through together, the rest model by model. Each result
    is what ``evaluate`` gives for that model; its ``seconds`` is the shared time split evenly."""
    backend = as_backend(models[0].backend)
    if mode != "generate" or len(models) < 2 or not backend.capabilities.joint:
        return [
            evaluate(benchmark, examples, m, cache=cache, mode=mode, batch_size=batch_size, progress=progress, role=r)
            for m, r in zip(models, roles, strict=True)
        ]
    check_mode(mode, benchmark)
    start = time.perf_counter()
    keys = [cache_key(benchmark, m, mode) for m in models]
    records = [cache.get(key) for key in keys]
    todo = [e for e in examples if all(e.id not in r for r in records)]
    for model in models:
        check_context(benchmark, model, todo, mode)

    def run(chunk: list[Example], inside: Callable[[int], None] | None) -> None:
        extra: dict[str, Any] = {"progress": inside} if inside and backend.capabilities.progress else {}
        try:
            sides = backend.generate_sides(
                models, [benchmark.messages(e) for e in chunk], max_tokens=benchmark.max_tokens,
                batch_size=batch_size, stop=benchmark.answer_decided, **extra,
            )  # fmt: skip
        except NonFiniteError as exc:
            raise _located(benchmark, chunk, exc) from None
        for key, side_records, replies in zip(keys, records, sides, strict=True):
            for example, reply in zip(chunk, replies, strict=True):
                side_records[example.id] = {"output": reply}
                cache.add(key, example.id, {"output": reply})

    step = batch_size or backend.default_batch_size or DEFAULT_BATCH
    _in_chunks(todo, len(examples), step, progress, f"{benchmark.title} {' + '.join(roles)} ({mode})", run)
    shared = (time.perf_counter() - start) / len(models)
    results = []
    for model, role, side_records in zip(models, roles, records, strict=True):
        missing = [e for e in examples if e.id not in side_records]  # cached for another model only
        if missing:
            own = evaluate(benchmark, missing, model, cache=cache, mode=mode, batch_size=batch_size, role=role)
            side_records.update({p.id: {"output": p.output} for p in own.predictions})
        results.append(_result(benchmark, examples, model, side_records, mode, shared))
    return results


def _in_chunks(
    todo: list[Example],
    total: int,
    step: int,
    progress: Reporter | None,
    label: str,
    run: Callable[[list[Example], Callable[[int], None] | None], None],
) -> None:
    """``run(chunk, inside)`` over ``todo`` in chunks of ``step``, with one progress task of
    ``total`` examples (those not in ``todo`` came from the cache); ``inside(done)`` reports
    progress within a chunk (None without a reporter)."""
    done_before = total - len(todo)
    tracking = progress.task(label, total, done_before) if progress is not None and todo else nullcontext()
    with tracking as task:
        for offset in range(0, len(todo), step):
            chunk = todo[offset : offset + step]
            at = done_before + offset
            inside = None if task is None else lambda done, at=at, n=len(chunk): task.update(at + min(done, n))
            run(chunk, inside)
            if task is not None:
                task.update(at + len(chunk))


def _result(
    benchmark: Benchmark, examples: Sequence[Example], model: Model, records: dict[str, Any], mode: str, seconds: float
) -> EvalResult:
    predictions = []
    for example in examples:
        record = records[example.id]
        prediction = benchmark.prediction(example, str(record["output"]))
        if "logprobs" in record:
            prediction = Prediction(**{**prediction.__dict__, "logprobs": dict(record["logprobs"])})
        predictions.append(prediction)
    metrics = benchmark.metrics(predictions)
    return EvalResult(
        benchmark=benchmark.name,
        model=ModelInfo(model.label, model.fingerprint),
        n=len(predictions),
        score=metrics[benchmark.primary_metric],
        metrics=metrics,
        predictions=predictions,
        seconds=seconds,
        title=benchmark.title,
        mode=mode,
        fingerprint=benchmark.fingerprint(),
    )
