"""A gate inside mlx-tune training: ``gated_mlx_training(trainer, gates, base=..., every=N)``.

mlx-tune's ``VLMSFTTrainer`` (0.6) has no callback hook: ``train()`` runs its whole loop and saves
the adapter at the end (``output_dir/adapters``). This wrapper runs it in chunks of ``every``
steps (``trainer.max_steps`` set per chunk, the data rotated so each chunk starts where the last
one ended: with mlx-tune's batch size of 1, the same examples in the same order as one run) and
gates the saved adapter between chunks with the ``mlx`` backend (``checks.GateChecks``: a fixed
sample per benchmark, the anytime-valid early stop, base answers computed once). A passing
adapter is copied to ``output_dir/ftgate-last-passing``; a gate proven to fail (``strict``) ends
the run. What differs from one ``train()`` call: each chunk starts a fresh Adam optimizer (its
moment estimates restart; mlx-tune's learning rate is constant, so nothing else changes), and the
base is loaded a second time for the checks (its memory once more).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_ftgate.backends.mlx import MLXBackend
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.training.checks import (
    DEFAULT_CHUNK, DEFAULT_SAMPLE, LAST_PASSING, CheckResult, GateChecks, keep_passing,
)  # fmt: skip


@dataclass
class GatedRun:
    """What a gated mlx-tune run did: the curve, the last passing step and where it was saved."""

    curve: list[CheckResult] = field(default_factory=list)
    steps: int = 0
    last_passing_step: int | None = None
    last_passing_dir: Path | None = None
    stopped_step: int | None = None

    @property
    def seconds(self) -> float:
        """Time spent checking, in total (the first check includes the base's answers)."""
        return sum(result.seconds for result in self.curve)


def gated_mlx_training(
    trainer: Any,
    gates: Mapping[Any, Mapping[str, Any]] | Iterable[tuple[Any, Mapping[str, Any]]],
    *,
    base: str | os.PathLike[str],
    every: int = 50,
    sample: int | None = DEFAULT_SAMPLE,
    chunk: int = DEFAULT_CHUNK,
    strict: bool = True,
    confidence: float = 0.95,
    data: str | os.PathLike[str] | None = None,
    verbose: bool = True,
) -> GatedRun:
    """Train ``trainer`` (an mlx-tune ``VLMSFTTrainer`` with ``max_steps``) in chunks of ``every``
    steps, gating the adapter of ``base`` (the model folder or hub id it was loaded from) after each."""
    total = getattr(trainer, "max_steps", None)
    if not isinstance(total, int) or total < 1:
        raise ConfigError("gated_mlx_training needs the trainer's max_steps: pass VLMSFTConfig(max_steps=N)")
    if not isinstance(every, int) or every < 1:
        raise ConfigError(f"every={every!r}: pass a positive number of steps between checks")
    if getattr(trainer, "batch_size", 1) != 1:
        raise ConfigError("gated_mlx_training follows mlx-tune's batch size of 1 (VLMSFTTrainer forces it)")
    dataset = list(trainer.train_dataset)
    if not dataset:
        raise ConfigError("the trainer's train_dataset is empty")
    checks = GateChecks(gates, data=data, sample=sample, chunk=chunk, strict=strict, confidence=confidence)
    backend = MLXBackend()
    base_model = backend.load(str(base))
    output = Path(trainer.output_dir)
    run = GatedRun()
    try:
        while run.steps < total:
            steps = min(every, total - run.steps)
            start = run.steps % len(dataset)
            trainer.train_dataset = dataset[start:] + dataset[:start]
            trainer.max_steps = steps
            trainer.train()
            run.steps += steps
            tuned = backend.with_adapter(base_model, str(output / "adapters"))
            try:
                result = checks.check(base_model, tuned, run.steps)
            finally:
                backend.detach_adapter(base_model.handle, str(tuned.adapter))
            if result.passed and not result.failed:
                run.last_passing_step = run.steps
                adapter = output / "adapters"
                run.last_passing_dir = keep_passing(
                    output / LAST_PASSING, result, lambda folder: shutil.copytree(adapter, folder)
                )
            run.curve.append(result)
            if verbose:
                print(result.line(), flush=True)
            if result.failed:
                run.stopped_step = run.steps
                break
    finally:
        trainer.train_dataset, trainer.max_steps = dataset, total
    return run

