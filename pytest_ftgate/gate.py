"""The ``Gate``: one session's models, benchmarks and results; usable from pytest or a script."""

from __future__ import annotations

import math
import os
import random
import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pytest_ftgate import benchmarks as registry
from pytest_ftgate import hub, stats
from pytest_ftgate.backends import Backend, Model, as_backend, create_backend, serves_names
from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.cache import PredictionCache
from pytest_ftgate.checkpoints import AdapterSpec, Checkpoint, one_checkpoint, resolve_checkpoints, spec_text
from pytest_ftgate.errors import BaselineMismatch, ConfigError, DataError, FtgateError, ModelError
from pytest_ftgate.fingerprint import digest
from pytest_ftgate.modes import check_mode
from pytest_ftgate.options import AUDIT, DEFAULT_BASE, DEFAULT_CACHE, audit_size, looks_local, positive_int
from pytest_ftgate.results import Comparison, EarlyStop, EvalResult
from pytest_ftgate.progress import Emit, Reporter, reporter
from pytest_ftgate.runner import evaluate, evaluate_sides

BackendFactory = Callable[[str], Backend]
EARLY_CHUNK = 50  # examples per look when stopping early
EARLY_SEED = "ftgate-early-stop-1"  # the shuffle is fixed: same order, same stopping point, every run
# A stored baseline's audit: how many of its examples are evaluated again (audit_sample_size) and how
# many fresh answers may differ from the stored ones (audit_allowance).
AUDIT_MIN = 8
AUDIT_SHARE = 0.05
AUDIT_MAX = 100
AUDIT_TOLERANCE = 0.02


class Gate:
    """Evaluate a base model and its fine-tune on benchmarks, and compare them example by example.

    Inputs are validated when the gate is created (adapter files, data folder, base folder, limit);
    models load on first use, each at most once. ``progress``: a tqdm bar (where one shows) or lines
    on standard error by default, ``False`` for none, or a callable that takes each line
    (:func:`pytest_ftgate.progress.reporter`).

    ``adapter`` may name several checkpoints (a training output folder, a glob, a list:
    ``pytest_ftgate.checkpoints``); ``checkpoints`` lists them in step order and the tuned model is
    the last one (the final adapter). ``compare(..., adapter=CHECKPOINT)`` compares another one and
    ``curve`` all of them, on the same examples with the one loaded base, whose side is evaluated
    once (or comes from its stored baseline). Only one adapter is on the base at a time: the
    previous one is taken off (``Backend.release_adapter``) before the next is put on.

    ``reference``: another adapter whose side replaces the base's (adapter vs adapter: "B must not
    be worse than A"). It is always evaluated (its answers cached under its own fingerprint); a
    stored baseline is the base model's and never stands in for it.
    """

    def __init__(
        self,
        base: str = DEFAULT_BASE,
        adapter: AdapterSpec | None = None,
        candidate: str | None = None,
        backend: str | Backend = "auto",
        data: str | os.PathLike[str] | None = None,
        limit: int | None = None,
        cache: str | os.PathLike[str] | None = DEFAULT_CACHE,
        batch_size: int | None = None,
        confidence: float = 0.95,
        mode: str = "generate",
        base_url: str | None = None,
        progress: bool | Emit | Reporter | None = True,
        make_backend: BackendFactory | None = None,
        audit: int | str = "auto",
        audit_seed: int | None = None,
        reference: str | os.PathLike[str] | None = None,
    ) -> None:
        if adapter is not None and candidate is not None:
            raise ConfigError("give either an adapter or a candidate model, not both")
        if reference is not None and adapter is None:
            raise ConfigError(
                "a reference adapter is compared with another adapter", fix="pass {adapter}=DIR with {reference}=DIR"
            )
        self.base = str(base)
        self.adapter = spec_text(adapter)
        self.candidate = candidate
        self.data = str(data) if data is not None else None
        self.limit = positive_int(limit, "limit")
        self.batch_size = positive_int(batch_size, "batch_size")
        self.confidence = confidence
        self.mode = check_mode(mode, source="Gate(mode=...)")
        self.base_url = base_url
        self.progress = reporter(progress)
        self.audit = audit_size(audit)  # "auto" or a number of examples; 0: stored baselines are not audited
        self.audit_seed = audit_seed  # None: a fresh random seed per audit, named in its note
        self.cache = PredictionCache(cache)
        # Missing or corrupt files of any checkpoint fail here, before any model loads.
        self.checkpoints: list[Checkpoint] = resolve_checkpoints(adapter) if adapter is not None else []
        self.reference: Checkpoint | None = None
        if reference is not None:
            self.reference = one_checkpoint(resolve_checkpoints(reference), reference, "reference")
        if self.data is not None and not Path(self.data).exists():
            raise DataError(f"data folder {self.data} does not exist", fix="check {data}")
        if not serves_names(backend):  # served model names are not folders
            _check_local_model(self.base, "base")
            if self.candidate is not None:
                _check_local_model(self.candidate, "candidate")
        self._backend_spec = backend
        self._make_backend = make_backend
        self._backend: Backend | None = None
        self._base_model: Model | None = None
        self._candidate_model: Model | None = None
        self._attached: dict[Path, Model] = {}  # the one checkpoint now on the base -> base + it
        self._examples: dict[str, list[Example]] = {}
        self._results: dict[tuple[str, str, str], EvalResult] = {}
        self._baselines: dict[tuple[str, str], EvalResult] = {}
        self._stored: dict[tuple[str, str], str] = {}  # baselines given by use_baseline -> where they came from
        self._baseline_notes: dict[tuple[str, str], str] = {}
        self.notes: list[str] = []  # things the report should say (e.g. a mode that could not apply)

    # -- models ------------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            spec = self._backend_spec
            if not isinstance(spec, str):
                self._backend = as_backend(spec)
            elif self._make_backend is not None:
                self._backend = as_backend(self._make_backend(spec))
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
    def final(self) -> Checkpoint | None:
        """The checkpoint gates judge by default: the last one (None for a candidate)."""
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def base_model(self) -> Model:
        if self._base_model is None:
            self._base_model = self._load(self.base, "base")
        return self._base_model

    def _load(self, model: str, setting: str) -> Model:
        """Load ``model`` (the value of ``setting``). A hub id is looked up once the hub has been
        probed: offline, the hub clients read their cache without retrying (``hub.prepare``), and
        a model not in it is one ModelError saying what to pass instead."""
        from_hub = not self.backend.capabilities.remote and not looks_local(model) and not Path(model).exists()
        if not from_hub or hub.prepare():
            return self.backend.load(model)
        try:
            return self.backend.load(model)
        except ModelError as exc:
            raise ModelError(
                f"{model} is a Hugging Face hub id, the hub cannot be reached ({hub.why_unreachable()}) and "
                "the model is not in the local hub cache",  # what the backend said: the exception's cause
                fix=f"pass a local model folder as {{{setting}}}=DIR, or download the model once while online "
                f"(huggingface-cli download {model})",
            ) from exc

    @property
    def tuned_model(self) -> Model:
        """Base + the final adapter (or the candidate). Raises ConfigError when neither was given."""
        if self.final is not None:
            return self.adapter_model(self.final)
        if self.candidate is not None:
            if self._candidate_model is None:
                self._candidate_model = self._load(self.candidate, "candidate")
            return self._candidate_model
        raise ConfigError("no adapter or candidate to gate", fix="pass {adapter}=DIR or {candidate}=MODEL")

    def checkpoint(self, adapter: Checkpoint | str | os.PathLike[str]) -> Checkpoint:
        """One of ``checkpoints`` (by its folder or the path the user has), or another adapter
        folder, inspected; AdapterError when ``adapter`` names several."""
        if isinstance(adapter, Checkpoint):
            return adapter
        where = Path(adapter).expanduser().resolve()
        known = [*self.checkpoints, *([self.reference] if self.reference else [])]
        found = next((c for c in known if where in (c.path.resolve(), c.source.resolve())), None)
        return found or one_checkpoint(resolve_checkpoints(adapter), adapter, "adapter")

    def adapter_model(self, adapter: Checkpoint | str | os.PathLike[str]) -> Model:
        """The loaded base with ``adapter`` on it (and no other adapter: one taken off first)."""
        checkpoint = self.checkpoint(adapter)
        if checkpoint.path in self._attached:
            return self._attached[checkpoint.path]
        self.release_adapters()
        model = self.backend.with_adapter(self.base_model, str(checkpoint.path))
        if checkpoint.source != checkpoint.path:  # a staged step save: name the user's file
            model = replace(model, label=f"{self.base_model.label} + {checkpoint.label}")
        self._attached[checkpoint.path] = model
        return model

    def release_adapters(self) -> None:
        """Take every adapter this gate put on the base off again (``Backend.release_adapter``)."""
        while self._attached:
            _, model = self._attached.popitem()
            self.backend.release_adapter(model)

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
        can_score = self.backend.capabilities.logprob
        if mode is not None:
            if mode == "logprob" and not can_score:
                raise ConfigError(
                    f"the {self.backend.name} backend cannot score log-probabilities: use mode='generate'"
                )
            return check_mode(mode, bench)
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
            role = "base" if model is self._base_model else "tuned" if model.adapter or self.candidate else "model"
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

    def _evaluate_together(self, bench: Benchmark, mode: str, tuned: Model) -> None:
        """Base and tuned in one pass (``runner.evaluate_sides``) when neither is known yet, no
        stored baseline stands for the base and the backend runs them together
        (``capabilities.joint``); ``baseline`` and ``evaluate`` then find both memoised."""
        base = self.base_model
        keys = [(bench.name, base.fingerprint, mode), (bench.name, tuned.fingerprint, mode)]
        if not self.backend.capabilities.joint or any(key in self._results for key in keys):
            return
        if (bench.name, mode) in self._baselines:  # evaluated, or stored (use_baseline)
            return
        results = evaluate_sides(
            bench, self.examples(bench), [base, tuned], cache=self.cache, mode=mode,
            batch_size=self.batch_size, progress=self.progress,
        )  # fmt: skip
        for key, result in zip(keys, results, strict=True):
            self._results[key] = result
        self._baselines[(bench.name, mode)] = results[0]

    def baseline(self, benchmark: str | Benchmark, mode: str | None = None) -> EvalResult:
        """The base model's result: a stored baseline when one was given (audited on first use),
        else evaluated."""
        bench = self.benchmark(benchmark)
        key = (bench.name, self.mode_for(bench, mode))
        stored = self._stored_baseline(bench, key[1])
        if stored is not None:
            return stored
        if key not in self._baselines:
            self._baselines[key] = self.evaluate(bench, self.base_model, key[1])
        return self._baselines[key]

    def use_baseline(self, benchmark: str | Benchmark, result: EvalResult, *, source: str | None = None) -> None:
        """Use a stored base result (its ``mode`` says which scoring) instead of evaluating the base.
        On first use a sample of its examples is evaluated again with the base model
        (``audit_baseline``, unless ``audit=0``); ``source`` names where it came from (a file)."""
        key = (self.benchmark(benchmark).name, result.mode)
        self._baselines[key] = result
        self._stored[key] = source or "given to Gate.use_baseline"
        self._baseline_notes.pop(key, None)

    def _stored_baseline(self, bench: Benchmark, mode: str) -> EvalResult | None:
        key = (bench.name, mode)
        if key not in self._stored:
            return None
        if key not in self._baseline_notes:  # audited once, on first use
            self._baseline_notes[key] = self.audit_baseline(bench, self._baselines[key], self._stored[key])
        return self._baselines[key]

    def audit_baseline(self, benchmark: str | Benchmark, stored: EvalResult, source: str = "") -> str:
        """Evaluate a randomly drawn sample of a stored base result's examples with the base model
        (through the prediction cache, like any evaluation) and compare the answers.

        A stored baseline is a file a pull request can edit; one edited consistently (answers and
        score together) passes every check of its contents, so this is the only way to see it.
        The sample is ``audit_sample_size`` examples drawn with a fresh seed each run (named in the
        note; ``audit_seed`` fixes it); more than ``audit_allowance`` differing answers raise
        BaselineMismatch. Returns the line the report shows.
        """
        bench = self.benchmark(benchmark)
        where = f"stored baseline {source}".rstrip()
        by_id = stored.by_id()
        size = audit_sample_size(self.audit, len(by_id))
        if size == 0:
            return f"{where}: not audited ({AUDIT}=0)"
        seed = self.audit_seed if self.audit_seed is not None else secrets.randbits(32)
        pool = [e for e in self.examples(bench) if e.id in by_id]
        drawn = random.Random(seed).sample(range(len(pool)), min(size, len(pool)))
        sample = [pool[i] for i in sorted(drawn)]  # in the benchmark's order
        fresh = evaluate(
            bench,
            sample,
            self.base_model,
            cache=self.cache,
            mode=stored.mode,
            batch_size=self.batch_size,
            progress=self.progress,
            role="base audit",
        )
        differ = [(p.id, by_id[p.id].parsed, p.parsed) for p in fresh.predictions if p.parsed != by_id[p.id].parsed]
        deterministic = self.backend.capabilities.deterministic
        allowed = audit_allowance(len(sample), deterministic)
        done = f"audited {len(sample)} of {len(by_id)} examples with the base model (seed {seed})"
        listed = "; ".join(f"{i!r}: stored {s!r}, now {f!r}" for i, s, f in differ[:10])
        if len(differ) > allowed:
            why = "the backend is deterministic" if deterministic else "the backend's nondeterminism"
            raise BaselineMismatch(
                f"{where} does not hold the base model's answers: {done}, {len(differ)} answered "
                f"differently (at most {allowed} allowed for {why}): {listed}"
                f"{' ...' if len(differ) > 10 else ''}. Its answers were edited or recorded with another "
                "setup: review its history, then run pytest --snapshot-update to re-record it"
            )
        if not differ:
            return f"{where}: {done}, all agree"
        return f"{where}: {done}, {len(differ)} differ within the {allowed} allowed for nondeterminism ({listed})"

    def baseline_fingerprint(self, benchmark: str | Benchmark, mode: str | None = None) -> dict[str, str]:
        """Everything that determines the base model's answers on this benchmark, part by part."""
        bench = self.benchmark(benchmark)
        mode = self.mode_for(bench, mode)
        model = self.backend.describe(self.base) or {"model": self.base_model.fingerprint}
        generation = {"mode": mode, "max_tokens": bench.max_tokens} if mode == "generate" else {"mode": mode}
        return {
            **model,
            "benchmark": bench.fingerprint(),
            "generation": digest(generation),
            "examples": digest([[e.id, e.prompt, e.gold] for e in self.examples(bench)]),
        }

    def compare(
        self,
        benchmark: str | Benchmark,
        mode: str | None = None,
        *,
        early_stop: stats.EarlyStopPolicy | None = None,
        adapter: Checkpoint | str | os.PathLike[str] | None = None,
        reference: Checkpoint | str | os.PathLike[str] | None = None,
    ) -> Comparison:
        """Base and tuned on the same examples, scored the same way. The tuned model is prepared
        first so that a broken adapter stops the run before the base is evaluated.

        ``adapter``: the checkpoint to compare (one of ``checkpoints``, or another adapter folder);
        default the final one (or the candidate). ``reference``: an adapter whose side replaces the
        base's (default the gate's ``reference``, if any): the verdict then reads "B vs A".

        ``early_stop=stats.EarlyStopPolicy(max_drop=..., min_gain=..., strict=...)`` evaluates
        shuffled chunks of ``EARLY_CHUNK`` examples and stops as soon as the verdict for those
        thresholds can no longer change (``stats.early_stop_decision``); ``comparison.early`` says
        how many were used.
        """
        bench = self.benchmark(benchmark)
        mode = self.mode_for(bench, mode)
        tuned_side = self.checkpoint(adapter) if adapter is not None else self.final
        if tuned_side is None and self.candidate is None:
            raise ConfigError("no adapter or candidate to gate", fix="pass {adapter}=DIR or {candidate}=MODEL")
        reference_side = self.checkpoint(reference) if reference is not None else self.reference
        if reference_side is not None and tuned_side is None:
            raise ConfigError("a reference adapter is compared with an adapter, not a candidate model")
        change = self._change(tuned_side, reference_side)

        def tuned_model() -> Model:
            return self.adapter_model(tuned_side) if tuned_side is not None else self.tuned_model

        if reference_side is None:
            tuned_model()  # a broken adapter stops the run before the base is evaluated
        if early_stop is not None:
            return self._compare_early(bench, mode, tuned_model, early_stop, reference_side, change)
        if reference_side is not None:
            base = self.evaluate(bench, self.adapter_model(reference_side), mode)
            note = None
        else:
            self._evaluate_together(bench, mode, tuned_model())
            base = self.baseline(bench, mode)
            note = self._baseline_notes.get((bench.name, mode))
        tuned = self.evaluate(bench, tuned_model(), mode)
        return Comparison(base, tuned, confidence=self.confidence, change=change, baseline_note=note)

    def curve(
        self,
        benchmark: str | Benchmark,
        mode: str | None = None,
        *,
        early_stop: stats.EarlyStopPolicy | None = None,
        errors: list[tuple[Checkpoint, FtgateError]] | None = None,
    ) -> list[tuple[Checkpoint, Comparison]]:
        """Every checkpoint compared with the base (or the reference), in step order, the final
        one last (it stays on the base afterwards). With an ``errors`` list, a checkpoint whose
        comparison raises an FtgateError (an adapter that does not fit, non-finite answers) is
        put there and left out; without one the error propagates."""
        points = []
        for checkpoint in self.checkpoints:
            try:
                points.append((checkpoint, self.compare(benchmark, mode, early_stop=early_stop, adapter=checkpoint)))
            except FtgateError as exc:
                if errors is None:
                    raise
                errors.append((checkpoint, exc))
        return points

    def _change(self, tuned: Checkpoint | None, reference: Checkpoint | None) -> str:
        """How the verdict names the step: "in runs/b vs runs/a", "at step 40", "after fine-tuning"."""
        if tuned is None:
            return self.change
        if reference is not None:
            return f"in {tuned.label} vs {reference.label}"
        if len(self.checkpoints) > 1 or tuned not in self.checkpoints:
            return f"at step {tuned.step}" if tuned.step is not None else f"in {tuned.label}"
        return self.change

    def _compare_early(
        self,
        bench: Benchmark,
        mode: str,
        tuned_model: Callable[[], Model],
        policy: stats.EarlyStopPolicy,
        reference: Checkpoint | None,
        change: str,
    ) -> Comparison:
        examples = self.examples(bench)
        order = sorted(examples, key=lambda e: digest([EARLY_SEED, e.id]))  # a fixed, content-blind shuffle
        stored = self._stored_baseline(bench, mode) if reference is None else None
        note = self._baseline_notes.get((bench.name, mode)) if reference is None else None
        for end in range(min(EARLY_CHUNK, len(order)), len(order) + EARLY_CHUNK, EARLY_CHUNK):
            part = order[: min(end, len(order))]
            run = {"cache": self.cache, "mode": mode, "batch_size": self.batch_size}
            if stored:
                base = _subset(bench, stored, part)
            else:
                base_model = self.base_model if reference is None else self.adapter_model(reference)
                base = evaluate(bench, part, base_model, **run)
            tuned = evaluate(bench, part, tuned_model(), **run)
            comparison = Comparison(base, tuned, confidence=self.confidence, change=change, baseline_note=note)
            lost, gained, n = len(comparison.lost), len(comparison.gained), len(part)
            outcome = policy.decision(lost, gained, n, len(order), self.confidence)
            if self.progress is not None:
                self.progress.note(
                    f"{bench.title} early stop ({mode}): {n}/{len(order)} examples, {lost} lost, {gained} gained"
                )
            if outcome is not None:
                interval = stats.paired_confidence_sequence(
                    lost, gained, n, confidence=self.confidence, n_max=len(order)
                )
                comparison.early = EarlyStop(
                    n, len(order), outcome, interval, policy.max_drop, policy.min_gain, policy.strict  # type: ignore[arg-type]
                )
                return comparison
        raise AssertionError("early_stop_decision decides at the last example")  # pragma: no cover

    def __repr__(self) -> str:
        reference = f", reference={str(self.reference.source)!r}" if self.reference is not None else ""
        return f"Gate(base={self.base!r}, adapter={self.adapter!r}, candidate={self.candidate!r}{reference})"


def compare_adapters(
    reference: str | os.PathLike[str],
    adapter: str | os.PathLike[str],
    benchmark: str | Benchmark,
    mode: str | None = None,
    **gate: object,
) -> Comparison:
    """Adapter B (``adapter``) against adapter A (``reference``) on the same base and examples,
    paired: ``compare_adapters("runs/a", "runs/b", "fpb", base=...).verdict(max_drop=1.0)`` says
    whether B is worse than A on FPB by more than 1 point. ``gate``: the other ``Gate`` keywords."""
    return Gate(reference=reference, adapter=adapter, **gate).compare(benchmark, mode)  # type: ignore[arg-type]


def audit_sample_size(audit: int | str, n: int) -> int:
    """How many of a stored baseline's ``n`` examples are evaluated again: ``audit`` when it is a
    number, else (``auto``) ``AUDIT_SHARE`` of them but at least ``AUDIT_MIN`` and at most
    ``AUDIT_MAX`` (8 of 40, 49 of 970, 100 of 4,183): a few percent of a full run's cost."""
    if audit == "auto":
        return min(n, max(AUDIT_MIN, math.ceil(AUDIT_SHARE * n)), AUDIT_MAX)
    return min(n, int(audit))


def audit_allowance(size: int, deterministic: bool) -> int:
    """How many of ``size`` audited answers may differ from the stored ones: none when the backend
    says it is ``deterministic`` (a class attribute); otherwise ``max(1, AUDIT_TOLERANCE * size)``,
    since batched bf16 or 4-bit decoding can turn a near-tie the other way when the batch differs
    (1 of 8, 2 of 100). A forgery that changes a share f of the stored answers is caught in one run
    with probability at least P(Binomial(size, f) > allowance): f = 10% with 49 audited, 96%;
    f = 5% with 100, 88%; f = 25% with 8, 63%. Each run draws a new sample."""
    return 0 if deterministic else max(1, math.floor(AUDIT_TOLERANCE * size))


def _subset(bench: Benchmark, result: EvalResult, examples: list[Example]) -> EvalResult:
    """A stored result restricted to ``examples`` (early stopping with a stored baseline)."""
    by_id = result.by_id()
    predictions = [by_id[e.id] for e in examples]
    metrics = bench.metrics(predictions)
    return replace(
        result, n=len(predictions), score=metrics[bench.primary_metric], metrics=metrics, predictions=predictions
    )


def _check_local_model(model: str, setting: str) -> None:
    hub.refuse_shadowed(model, model, setting)  # a folder named like a hub id must not stand in for it
    if looks_local(model) and not Path(model).expanduser().exists():
        raise ModelError(
            f"model folder {model} does not exist",
            fix=f"check {{{setting}}} (a local folder, or a hub id such as mlx-community/gemma-4-e4b-it-4bit)",
        )
