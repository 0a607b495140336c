"""Evaluate one model on one benchmark: cached outputs first, then batches through the backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pytest_ftgate.backends import Model
from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.cache import PredictionCache
from pytest_ftgate.results import EvalResult, ModelInfo, Prediction

Progress = Callable[[str], None]
DEFAULT_BATCH = 8
PROGRESS_EVERY = 10.0  # seconds between progress lines; the last batch always reports


def evaluate(
    benchmark: Benchmark,
    examples: Sequence[Example],
    model: Model,
    *,
    cache: PredictionCache,
    batch_size: int | None = None,
    progress: Progress | None = None,
    role: str = "model",
) -> EvalResult:
    """Run ``model`` on ``examples`` (resuming from ``cache``) and score the outputs."""
    key = {
        "model": model.fingerprint,
        "benchmark": benchmark.fingerprint(),
        "mode": "generate",
        "max_tokens": benchmark.max_tokens,
    }
    start = time.perf_counter()
    outputs = cache.get(key)
    todo = [e for e in examples if e.id not in outputs]
    step = batch_size or DEFAULT_BATCH
    done_before = len(examples) - len(todo)
    last_report = start
    for offset in range(0, len(todo), step):
        chunk = todo[offset : offset + step]
        replies = model.backend.generate(
            model, [benchmark.messages(e) for e in chunk], max_tokens=benchmark.max_tokens, batch_size=batch_size
        )
        for example, reply in zip(chunk, replies, strict=True):
            outputs[example.id] = reply
            cache.add(key, example.id, reply)
        now = time.perf_counter()
        done = offset + len(chunk)
        if progress is not None and (now - last_report >= PROGRESS_EVERY or done == len(todo)):
            last_report = now
            rate = done / max(now - start, 1e-9)
            left = (len(todo) - done) / rate if rate else 0.0
            progress(
                f"{benchmark.title} {role}: {done_before + done}/{len(examples)} examples "
                f"({rate:.1f}/s, ~{left:.0f} s left)"
            )
    predictions = []
    for example in examples:
        output = outputs[example.id]
        parsed = benchmark.parse(output)
        predictions.append(
            Prediction(example.id, output, parsed, example.gold, benchmark.is_correct(parsed, example.gold), example.text)
        )
    metrics = benchmark.metrics(predictions)
    return EvalResult(
        benchmark=benchmark.name,
        model=ModelInfo(model.label, model.fingerprint),
        n=len(predictions),
        score=metrics[benchmark.primary_metric],
        metrics=metrics,
        predictions=predictions,
        seconds=time.perf_counter() - start,
        title=benchmark.title,
        fingerprint=benchmark.fingerprint(),
    )
