"""Cross-backend parity: the same tiny Gemma 4 and adapter through mlx and transformers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ftgate import Gate, parity
from tests.test_results import result

pytest.importorskip("mlx_vlm")
pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0 -e .[torch]")
pytest.importorskip("peft")


def test_parity_counts_differences() -> None:
    same = parity(result([True, False, True]), result([True, False, True]))
    assert same.agreement == 100.0 and same.differing == []
    other = parity(result([True, False, True]), result([True, True, True]))
    assert other.agreement == pytest.approx(200 / 3) and [f.id for f in other.differing] == ["e1"]
    assert "agree on 66.7% of 3 examples (1 differ" in other.summary()
    with pytest.raises(ValueError, match="same example ids"):
        parity(result([True]), result([True, True]))


def test_mlx_and_transformers_agree(tmp_path: Path, shared_data: Callable[..., Path]) -> None:
    from pytest_ftgate.testing import make_adapter, make_tiny_gemma4

    data = shared_data("fpb")
    base = make_tiny_gemma4(tmp_path / "tiny")
    adapter = make_adapter(base, tmp_path / "lora", strength=1.0, seed=3)
    results = {}
    for backend in ("mlx", "transformers"):
        gate = Gate(base=str(base), adapter=adapter, backend=backend, data=data, limit=30, cache=None)
        results[backend] = gate.evaluate("fpb", gate.tuned_model)
    check = parity(results["mlx"], results["transformers"])
    assert check.agreement == 100.0, check.summary()
