"""One place validates scoring modes (pytest_ftgate.modes.check_mode): the option, the Gate, the
marker and the runner all give its message."""

from __future__ import annotations

import pytest

from pytest_ftgate import Gate, benchmarks
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.marker import parse_marker
from pytest_ftgate.modes import MODES, check_mode
from pytest_ftgate.options import MODE, scoring_mode
from pytest_ftgate.runner import evaluate


def test_the_modes_and_what_they_accept() -> None:
    assert MODES == ("generate", "logprob")
    fpb = benchmarks.get_benchmark("finsent-probe")
    assert [check_mode(mode, fpb) for mode in MODES] == ["generate", "logprob"]
    assert check_mode("generate", benchmarks.get_benchmark("arith-probe")) == "generate"


@pytest.mark.parametrize("bad", ["bogus", "Generate", "", 1])
def test_unknown_mode_names_where_it_came_from(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^mode must be generate or logprob, got "):
        check_mode(bad)
    with pytest.raises(ConfigError, match=r"^Gate\(mode=\.\.\.\) must be generate or logprob, got "):
        Gate(base="some/hub-model", mode=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^t\.py::test_x: mode must be generate or logprob, got "):
        parse_marker(("finsent-probe",), {"mode": bad}, "t.py::test_x")


def test_option_reads_an_empty_value_as_generate_and_names_the_option() -> None:
    assert scoring_mode(None) == "generate" and scoring_mode("logprob") == "logprob"
    with pytest.raises(ConfigError, match=rf"^{MODE} must be generate or logprob, got 'bogus'$"):
        scoring_mode("bogus")


def test_logprob_needs_a_fixed_answer_set_everywhere() -> None:
    arith = benchmarks.get_benchmark("arith-probe")
    message = r"Arithmetic probe \(synthetic\) has no fixed answer set, so it cannot be scored by log-probability"
    with pytest.raises(ConfigError, match=message):
        check_mode("logprob", arith)
    with pytest.raises(ConfigError, match="^t.py::test_x: " + message):
        parse_marker(("arith-probe",), {"mode": "logprob"}, "t.py::test_x")
    with pytest.raises(ConfigError, match=message):
        evaluate(arith, arith.load(), None, cache=None, mode="logprob")  # type: ignore[arg-type]  # before any model
