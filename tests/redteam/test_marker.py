"""Red team, the marker (issue 12 items 8 and 9): thresholds that can never be met, and marker
mistakes that must read as one clean line, not a page of pluggy frames."""

from __future__ import annotations

import pytest

from pytest_ftgate.errors import ConfigError
from pytest_ftgate.marker import parse_marker


def _run_marker(project: pytest.Pytester, marker: str) -> pytest.RunResult:
    project.makepyfile(f"""
        import pytest

        @pytest.mark.ftgate({marker})
        def test_x():
            pass

        def test_plain():
            pass
    """)
    return project.runpytest("-p", "no:randomly")


def _assert_one_clean_line(result: pytest.RunResult, message: str) -> None:
    """The message is shown; no traceback, no pluggy or pytest frames. A bad marker is a collection
    error of its module: pytest stops before running anything, exit code 2 (INTERRUPTED)."""
    output = result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([message])
    assert "Traceback" not in output
    assert "pluggy/" not in output and "_pytest/" not in output and "site-packages" not in output
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('"sentiment", max_dorp=2.0', "*unknown @pytest.mark.ftgate keyword 'max_dorp'. Did you mean 'max_drop'*"),
        ('"sentiment", max_drop="2"', "*test_x: max_drop must be a number of points, got '2'*"),
        ('"sentiment", min_gain="two"', "*test_x: min_gain must be a number of points, got 'two'*"),
        ('"sentimnt"', "*unknown benchmark 'sentimnt'*"),
    ],
    ids=["unknown-keyword", "string-max-drop", "string-min-gain", "unknown-benchmark"],
)
def test_marker_mistake_is_one_clean_line(gate_project: pytest.Pytester, marker: str, message: str) -> None:
    _assert_one_clean_line(_run_marker(gate_project, marker), message)


@pytest.mark.parametrize(
    "marker",
    ['"sentiment", max_drop=float("nan")', '"sentiment", max_drop=float("inf")', '"sentiment", min_gain=float("nan")'],
    ids=["nan-max-drop", "inf-max-drop", "nan-min-gain"],
)
def test_non_finite_marker_threshold_is_refused(gate_project: pytest.Pytester, marker: str) -> None:
    """Before: accepted, and every run failed with "allowed nan"."""
    _assert_one_clean_line(_run_marker(gate_project, marker), "*test_x: * must be a finite number of points, got *")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("key", ["max_drop", "min_gain"])
def test_parse_marker_refuses_non_finite(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"t.py::t: {key} must be a finite number of points"):
        parse_marker(("fpb",), {key: value}, "t.py::t")
