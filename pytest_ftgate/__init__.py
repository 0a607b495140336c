"""pytest-ftgate: fail the test suite when a fine-tune makes the model worse.

The plugin module is ``pytest_ftgate.plugin`` (entry point ``ftgate``). The same engine works in
scripts and notebooks through ``Gate`` and ``compare``.
"""

from __future__ import annotations

from pytest_ftgate.backends import Backend, Model, register_backend
from pytest_ftgate.benchmarks import register_benchmark
from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.errors import AdapterError, ConfigError, DataError, FtgateError, ModelError, NonFiniteError
from pytest_ftgate.gate import Gate, compare_adapters
from pytest_ftgate.results import Comparison, EvalResult, ModelInfo, Parity, Prediction, Verdict, compare, parity

__all__ = [
    "AdapterError",
    "Backend",
    "Benchmark",
    "Comparison",
    "ConfigError",
    "DataError",
    "EvalResult",
    "Example",
    "FtgateError",
    "Gate",
    "Model",
    "ModelError",
    "ModelInfo",
    "NonFiniteError",
    "Parity",
    "Prediction",
    "Verdict",
    "compare",
    "compare_adapters",
    "parity",
    "register_backend",
    "register_benchmark",
]
