"""The ``Gate``: one session's models, benchmarks and results; usable from pytest or a script."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pytest_ftgate import benchmarks as registry
from pytest_ftgate import stats
from pytest_ftgate.adapters import inspect_adapter
from pytest_ftgate.backends import Backend, Model, create_backend
from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.cache import PredictionCache
from pytest_ftgate.errors import ConfigError, DataError, ModelError
from pytest_ftgate.fingerprint import digest
from pytest_ftgate.options import DEFAULT_BASE, DEFAULT_CACHE, looks_local, positive_int
from pytest_ftgate.results import Comparison, EarlyStop, EvalResult
from pytest_ftgate.runner import MODES, Progress, check_mode, evaluate

BackendFactory = Callable[[str], Backend]
EARLY_CHUNK = 50  # examples per look when stopping early
EARLY_SEED = "ftgate-early-stop-1"  # the shuffle is fixed: same order, same stopping point, every run


class Gate:
    """Evaluate a base model and its fine-tune on benchmarks, and compare them example by example.

    Inputs are validated when the gate is created (adapter files, data folder, base folder, limit);
    models load on first use, each at most once.
    """

    def __init__(
        self,
        base: str = DEFAULT_BASE,
        adapter: str | os.PathLike[str] | None = None,
        candidate: str | None = None,
        backend: str | Backend = "auto",
        data: str | os.PathLike[str] | None = None,
        limit: int | None = None,
        cache: str | os.PathLike[str] | None = DEFAULT_CACHE,
        batch_size: int | None = None,
        confidence: float = 0.95,
        mode: str = "generate",
        base_url: str | None = None,
        progress: Progress | None = None,
        make_backend: BackendFactory | None = None,
    ) -> None:
        if adapter is not None and candidate is not None:
            raise ConfigError("give either an adapter or a candidate model, not both")
        self.base = str(base)
        self.adapter = str(adapter) if adapter is not None else None
        self.candidate = candidate
        self.data = str(data) if data is not None else None
        self.limit = positive_int(limit, "--ftgate-limit")
        self.batch_size = positive_int(batch_size, "--ftgate-batch-size")
        self.confidence = confidence
        if mode not in MODES:
            raise ConfigError(f"unknown scoring mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode
        self.base_url = base_url
        self.progress = progress
        self.cache = PredictionCache(cache)
        if self.adapter is not None:
            inspect_adapter(self.adapter)  # missing or corrupt files fail here, before any model loads
        if self.data is not None and not Path(self.data).exists():
            raise DataError(f"data folder {self.data} does not exist: check --ftgate-data")
        served = backend == "openai" or getattr(backend, "remote", False)  # model names, not folders
        if not served:
            _check_local_model(self.base, "--ftgate-base")
            if self.candidate is not None:
                _check_local_model(self.candidate, "--ftgate-candidate")
        self._backend_spec = backend
        self._make_backend = make_backend
        self._backend: Backend | None = None
        self._base_model: Model | None = None
        self._tuned_model: Model | None = None
        self._examples: dict[str, list[Example]] = {}
        self._results: dict[tuple[str, str, str], EvalResult] = {}
        self._baselines: dict[tuple[str, str], EvalResult] = {}
        self.notes: list[str] = []  # things the report should say (e.g. a mode that could not apply)

    # -- models ------------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            spec = self._backend_spec
            if not isinstance(spec, str):
                self._backend = spec
            elif self._make_backend is not None:
                self._backend = self._make_backend(spec)
            else:
                self._backend = create_backend(spec, base_url=self.base_url)
        return self._backend

    @property
    def has_tuned(self) -> bool:
        return self.adapter is not None or self.candidate is not None

    @property
    def change(self) -> str:
        """How verdicts name the step from base to tuned."""
        return "in the candidate" if self.candidate is not None else "after fine-tuning"

    @property
    def base_model(self) -> Model:
        if self._base_model is None:
            self._base_model = self.backend.load(self.base)
        return self._base_model

    @property
    def tuned_model(self) -> Model:
        """Base + adapter (or the candidate). Raises ConfigError when neither was given."""
        if self._tuned_model is None:
            if self.adapter is not None:
                self._tuned_model = self.backend.with_adapter(self.base_model, self.adapter)
            elif self.candidate is not None:
                self._tuned_model = self.backend.load(self.candidate)
            else:
                raise ConfigError(
                    "no adapter or candidate to gate: pass --ftgate-adapter=DIR or --ftgate-candidate=MODEL"
                )
        return self._tuned_model

    # -- benchmarks --------------------------------------------------------------------------

    def benchmark(self, benchmark: str | Benchmark) -> Benchmark:
        return benchmark if isinstance(benchmark, Benchmark) else registry.get_benchmark(benchmark)

    def examples(self, benchmark: str | Benchmark) -> list[Example]:
        bench = self.benchmark(benchmark)
        if bench.name not in self._examples:
            self._examples[bench.name] = bench.select(bench.load(self.data), self.limit)
        return self._examples[bench.name]

    def mode_for(self, benchmark: str | Benchmark, mode: str | None = None) -> str:
        """The scoring mode: ``mode`` if given, else the gate's where the benchmark supports it."""
        bench = self.benchmark(benchmark)
        can_score = hasattr(self.backend, "score")
        if mode is not None:
            if mode == "logprob" and not can_score:
                raise ConfigError(
                    f"the {self.backend.name} backend cannot score log-probabilities: use mode='generate'"
                )
            return check_mode(bench, mode)
        if self.mode == "logprob" and bench.supports_logprob and not can_score:
            self.notes.append(
                f"{bench.title}: generate mode (the {self.backend.name} backend has no log-probabilities)"
            )
        return self.mode if self.mode == "generate" or (bench.supports_logprob and can_score) else "generate"

    def evaluate(self, benchmark: str | Benchmark, model: Model, mode: str | None = None) -> EvalResult:
        """Evaluate ``model`` on the benchmark's (limited) examples; memoised per model and mode."""
        bench = self.benchmark(benchmark)
        mode = self.mode_for(bench, mode)
        key = (bench.name, model.fingerprint, mode)
        if key not in self._results:
            role = "tuned" if model is self._tuned_model else "base" if model is self._base_model else "model"
            self._results[key] = evaluate(
                bench,
                self.examples(bench),
                model,
                cache=self.cache,
                mode=mode,
                batch_size=self.batch_size,
                progress=self.progress,
                role=role,
            )
        return self._results[key]

    def baseline(self, benchmark: str | Benchmark, mode: str | None = None) -> EvalResult:
        """The base model's result: a stored baseline when one was given, else evaluated."""
        bench = self.benchmark(benchmark)
        key = (bench.name, self.mode_for(bench, mode))
        if key not in self._baselines:
            self._baselines[key] = self.evaluate(bench, self.base_model, key[1])
        return self._baselines[key]

    def use_baseline(self, benchmark: str | Benchmark, result: EvalResult) -> None:
        """Use a stored base result (its ``mode`` says which scoring) instead of evaluating the base."""
        self._baselines[(self.benchmark(benchmark).name, result.mode)] = result

    def baseline_fingerprint(self, benchmark: str | Benchmark, mode: str | None = None) -> dict[str, str]:
        """Everything that determines the base model's answers on this benchmark, part by part."""
        bench = self.benchmark(benchmark)
        mode = self.mode_for(bench, mode)
        describe = getattr(self.backend, "describe", None)
        model = describe(self.base) if describe is not None else {"model": self.base_model.fingerprint}
        generation = {"mode": mode, "max_tokens": bench.max_tokens} if mode == "generate" else {"mode": mode}
        return {
            **model,
            "benchmark": bench.fingerprint(),
            "generation": digest(generation),
            "examples": digest([e.id for e in self.examples(bench)]),
        }

    def compare(
        self,
        benchmark: str | Benchmark,
        mode: str | None = None,
        *,
        early_stop: dict[str, Any] | None = None,
    ) -> Comparison:
        """Base and tuned on the same examples, scored the same way. The tuned model is prepared
        first so that a broken adapter stops the run before the base is evaluated.

        ``early_stop={"max_drop": ..., "min_gain": ..., "strict": ...}`` evaluates shuffled chunks
        of ``EARLY_CHUNK`` examples and stops as soon as the verdict for those thresholds can no
        longer change (``stats.early_stop_decision``); ``comparison.early`` says how many were used.
        """
        bench = self.benchmark(benchmark)
        mode = self.mode_for(bench, mode)
        tuned_model = self.tuned_model
        if early_stop is not None:
            return self._compare_early(bench, mode, tuned_model, **early_stop)
        base = self.baseline(bench, mode)
        tuned = self.evaluate(bench, tuned_model, mode)
        return Comparison(base, tuned, confidence=self.confidence, change=self.change)

    def _compare_early(
        self,
        bench: Benchmark,
        mode: str,
        tuned_model: Model,
        *,
        max_drop: float | None,
        min_gain: float | None,
        strict: bool,
    ) -> Comparison:
        examples = self.examples(bench)
        order = sorted(examples, key=lambda e: digest([EARLY_SEED, e.id]))  # a fixed, content-blind shuffle
        stored = self._baselines.get((bench.name, mode))
        for end in range(min(EARLY_CHUNK, len(order)), len(order) + EARLY_CHUNK, EARLY_CHUNK):
            part = order[: min(end, len(order))]
            run = {"cache": self.cache, "mode": mode, "batch_size": self.batch_size}
            base = _subset(bench, stored, part) if stored else evaluate(bench, part, self.base_model, **run)
            tuned = evaluate(bench, part, tuned_model, **run)
            comparison = Comparison(base, tuned, confidence=self.confidence, change=self.change)
            lost, gained, n = len(comparison.lost), len(comparison.gained), len(part)
            outcome = stats.early_stop_decision(
                lost,
                gained,
                n,
                len(order),
                max_drop=max_drop,
                min_gain=min_gain,
                strict=strict,
                confidence=self.confidence,
            )
            if self.progress is not None:
                self.progress(
                    f"{bench.title} early stop ({mode}): {n}/{len(order)} examples, {lost} lost, {gained} gained"
                )
            if outcome is not None:
                interval = stats.paired_confidence_sequence(
                    lost, gained, n, confidence=self.confidence, n_max=len(order)
                )
                comparison.early = EarlyStop(n, len(order), outcome, interval, max_drop, min_gain, strict)  # type: ignore[arg-type]
                return comparison
        raise AssertionError("early_stop_decision decides at the last example")  # pragma: no cover

    def __repr__(self) -> str:
        return f"Gate(base={self.base!r}, adapter={self.adapter!r}, candidate={self.candidate!r})"


def _subset(bench: Benchmark, result: EvalResult, examples: list[Example]) -> EvalResult:
    """A stored result restricted to ``examples`` (early stopping with a stored baseline)."""
    by_id = result.by_id()
    predictions = [by_id[e.id] for e in examples]
    metrics = bench.metrics(predictions)
    return replace(
        result, n=len(predictions), score=metrics[bench.primary_metric], metrics=metrics, predictions=predictions
    )


def _check_local_model(model: str, option: str) -> None:
    if looks_local(model) and not Path(model).expanduser().exists():
        raise ModelError(
            f"model folder {model} does not exist: check {option} "
            "(a local folder, or a hub id such as mlx-community/gemma-4-e4b-it-4bit)"
        )
