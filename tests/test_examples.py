"""The examples run as tests: each folder under examples/ through pytest, on the real mlx path
(tiny Gemma 4, mlx-tune adapters) with the benchmark data from ../shared/data."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ftgate import options

pytest.importorskip("mlx_vlm")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def data(shared_data: Callable[..., Path]) -> Path:
    return shared_data("fpb")


@pytest.fixture(scope="module")
def models(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Gemma 4 and two adapters (built only where the data is there: ``data`` skips first)."""
    from pytest_ftgate.testing import make_adapter, make_tiny_gemma4

    root = tmp_path_factory.mktemp("example-models")
    base = make_tiny_gemma4(root / "tiny-gemma4")
    return {
        "base": base,
        "gentle": make_adapter(base, root / "gentle", strength=0.01, seed=1),
        "forgetful": make_adapter(base, root / "forgetful", teach="positive"),
    }


def run_example(
    pytester: pytest.Pytester, name: str, models: dict[str, Path], adapter: str, data: Path
) -> pytest.RunResult:
    shutil.copytree(EXAMPLES / name, pytester.path, dirs_exist_ok=True)
    return pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"{options.BASE}={models['base']}",
        f"{options.ADAPTER}={models[adapter]}",
        f"{options.BACKEND}=mlx",
        f"{options.DATA}={data}",
        f"{options.LIMIT}=20",
        f"{options.CACHE}={pytester.path / 'cache'}",
    )


def test_quickstart_stops_a_forgetting_adapter(pytester: pytest.Pytester, models: dict[str, Path], data: Path) -> None:
    result = run_example(pytester, "quickstart", models, "forgetful", data)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*FPB dropped * points (* -> *) after fine-tuning; allowed 2.0. 20 examples*"])
    result.stdout.fnmatch_lines(["*MedMCQA*required gain 5.0*"])


def test_custom_benchmark_from_jsonl(pytester: pytest.Pytester, models: dict[str, Path], data: Path) -> None:
    result = run_example(pytester, "custom_benchmark", models, "gentle", data)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*Tickets*12*pass*"])  # the terminal summary row


def test_shared_thresholds(pytester: pytest.Pytester, models: dict[str, Path], data: Path) -> None:
    result = run_example(pytester, "shared_thresholds", models, "gentle", data)
    # a gentle adapter forgets nothing, but it does not bring the medical gain either
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*MedMCQA did not change*required gain 3.0*"])


def test_custom_assertions(pytester: pytest.Pytester, models: dict[str, Path], data: Path) -> None:
    result = run_example(pytester, "custom_assertions", models, "gentle", data)
    result.assert_outcomes(passed=2)


def test_ci_workflow_uses_real_options() -> None:
    workflow = (EXAMPLES / "ci" / "adapter-gate.yml").read_text()
    used = set(re.findall(r"--ftgate-[a-z-]+", workflow))
    known = {value for name, value in vars(options).items() if name.isupper() and str(value).startswith("--ftgate-")}
    assert used and used <= known, used - known
    assert "pytest tests/gates" in workflow and "GITHUB_STEP_SUMMARY" in workflow
