"""Benchmarks: examples, prompts, parsing and metrics. Built-ins are registered lazily.

``get_benchmark("fpb")`` imports :mod:`pytest_ftgate.benchmarks.builtin` on first use; neither
that nor this module imports ``datasets`` or ``sklearn``.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import threading

from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.errors import ConfigError

__all__ = ["Benchmark", "Example", "benchmark_names", "get_benchmark", "register_benchmark"]

_BUILTINS: dict[str, str] = {
    "medmcqa": "pytest_ftgate.benchmarks.builtin:MedMCQA",
    "fpb": "pytest_ftgate.benchmarks.builtin:FPB",
    "convfinqa": "pytest_ftgate.benchmarks.builtin:ConvFinQA",
    "finsent-probe": "pytest_ftgate.benchmarks.synthetic:SyntheticFinSent",
    "arith-probe": "pytest_ftgate.benchmarks.synthetic:SyntheticArith",
}

# name -> a Benchmark instance, a Benchmark subclass, or "module:Class" (instantiated on first use)
_registry: dict[str, Benchmark | type[Benchmark] | str] = dict(_BUILTINS)
_lock = threading.Lock()


def register_benchmark(benchmark: Benchmark | type[Benchmark], name: str | None = None) -> None:
    """Make ``benchmark`` available under ``name`` (default: its ``name``); replaces a same-named one.

    Pass an instance (e.g. from ``Benchmark.from_jsonl``) or a ``Benchmark`` subclass, which is
    instantiated without arguments on first use.
    """
    is_class = isinstance(benchmark, type) and issubclass(benchmark, Benchmark)
    if not is_class and not isinstance(benchmark, Benchmark):
        raise ConfigError(
            f"register_benchmark() takes a Benchmark instance or subclass, got {benchmark!r}; "
            "build one with pytest_ftgate.Benchmark.from_jsonl(...) or subclass Benchmark"
        )
    key = name if name is not None else benchmark.name
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(
            f"register_benchmark({benchmark!r}): the benchmark has no name; set its 'name' "
            "attribute or pass name='...'"
        )
    if isinstance(benchmark, Benchmark) and benchmark.name != key:
        benchmark = copy.copy(benchmark)
        benchmark.name = key
    with _lock:
        _registry[key] = benchmark


def benchmark_names() -> list[str]:
    """Every registered name, sorted."""
    return sorted(_registry)


def get_benchmark(name: str) -> Benchmark:
    """The benchmark registered as ``name`` (exact, else case-insensitive match).

    An unknown name is a ConfigError with a "did you mean" hint and the available names.
    """
    with _lock:
        key = _lookup(name)
        entry = _registry[key]
        if isinstance(entry, Benchmark):
            return entry
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), attr)
        instance = entry()
        if instance.name != key:
            instance = copy.copy(instance)
            instance.name = key
        _registry[key] = instance
        return instance


def _lookup(name: str) -> str:
    if isinstance(name, str):
        if name in _registry:
            return name
        folded = {key.lower(): key for key in _registry}
        if name.lower() in folded:
            return folded[name.lower()]
    available = sorted(_registry)
    close = difflib.get_close_matches(str(name).lower(), available, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    raise ConfigError(
        f"unknown benchmark {name!r}{hint} Available: {', '.join(available)}. Register your own "
        "with pytest_ftgate.register_benchmark(...) in a conftest.py"
    )
