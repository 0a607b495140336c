"""Scoring modes: which exist and where each applies. The one place that validates a mode: the
option (``--ftgate-mode``), ``Gate(mode=...)``, the marker's ``mode=`` and the runner all call
:func:`check_mode`.

Base and tuned are never scored in different modes: the mode is part of every cache key,
baseline fingerprint and report.

- ``generate``: the seed study's protocol: greedy decoding up to the benchmark's ``max_tokens``,
  then the benchmark's parsing rule.
- ``logprob``: for benchmarks with a fixed answer set, one scoring pass per example: the answer
  whose reply forms have the highest total probability wins (``Benchmark.answer_forms``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_ftgate.errors import ConfigError

if TYPE_CHECKING:
    from pytest_ftgate.benchmarks.base import Benchmark

MODES = ("generate", "logprob")


def check_mode(mode: object, benchmark: Benchmark | None = None, *, source: str = "mode") -> str:
    """``mode`` when it is one of :data:`MODES` and, given a benchmark, applies to it; otherwise a
    ConfigError naming ``source`` (the option or keyword the value came from) and the fix."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ConfigError(f"{source} must be {' or '.join(MODES)}, got {mode!r}")
    if benchmark is not None and mode == "logprob" and not benchmark.supports_logprob:
        raise ConfigError(
            f"{benchmark.title} has no fixed answer set, so it cannot be scored by log-probability: "
            "use mode='generate' for it"
        )
    return mode
