"""Red team, the reports (issue 12 items 4, 6, 7 and 8): an errored gate reported as a pass, a
measurement read as a gate, data that forges terminal lines or Markdown, thresholds that can
never be met. Plugin behaviour through pytester on the fake backend of ``gate_project``."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from pytest_ftgate import options
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.results import EvalResult, ModelInfo, Prediction, compare

GATE = """
import pytest

@pytest.mark.ftgate("sentiment", max_drop=2.0)
def test_gate():
    pass
"""

MEASURE = """
import pytest

@pytest.mark.ftgate("sentiment")
def test_measure():
    pass

@pytest.mark.ftgate("sentiment")
def test_measure_again():
    pass
"""

AdapterArg = Callable[..., str]


def _reports(project: pytest.Pytester) -> list[str]:
    return [f"{options.REPORT}=out/r.json", f"{options.MARKDOWN}=out/r.md"]


def _json(project: pytest.Pytester) -> dict:
    return json.loads((project.path / "out" / "r.json").read_text(encoding="utf-8"))


def _markdown(project: pytest.Pytester) -> str:
    return (project.path / "out" / "r.md").read_text(encoding="utf-8")


# --- item 4: an errored gate is never reported as a pass -------------------------------------


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_adapter_that_does_not_fit_is_an_error_in_every_report(
    gate_project: pytest.Pytester, fake_adapter: AdapterArg, workers: list[str]
) -> None:
    """Before: JSON ``summary.outcome: "pass"`` with 0 gates, Markdown "no gates ran" (green)."""
    if workers:
        pytest.importorskip("xdist")
    gate_project.makepyfile(GATE)
    result = gate_project.runpytest(
        *workers, fake_adapter(fake_no_effect=True), *_reports(gate_project), "--junitxml=out/junit.xml"
    )
    result.assert_outcomes(errors=1)
    data = _json(gate_project)
    assert data["summary"]["outcome"] == "error"
    assert (data["summary"]["gates"], data["summary"]["errors"]) == (1, 1)
    (gate,) = data["gates"]
    assert (gate["nodeid"], gate["benchmark"], gate["verdict"]["outcome"]) == (
        "test_adapter_that_does_not_fit_is_an_error_in_every_report.py::test_gate",
        "sentiment",
        "error",
    )
    assert "has no effect" in gate["error"]
    markdown = _markdown(gate_project)
    assert "no gates ran" not in markdown and "\u2705" not in markdown
    assert markdown.startswith("### \u274c ftgate: Sentiment errored")
    assert "> [!CAUTION]" in markdown and "has no effect" in markdown
    result.stdout.fnmatch_lines(["Sentiment*error*", "ftgate: Sentiment errored", "*test_gate*has no effect*"])
    junit = (gate_project.path / "out" / "junit.xml").read_text(encoding="utf-8")
    assert '<property name="ftgate_verdict" value="error"' in junit


def test_error_outranks_fail_and_pass(gate_project: pytest.Pytester, fake_adapter: AdapterArg) -> None:
    """A fixture of the gated test that raises: the comparison is never computed; that gate is an
    error, and the run's outcome is ``error`` even beside a failing and a passing gate."""
    gate_project.makepyfile("""
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("no GPU today")

        @pytest.mark.ftgate("sentiment", max_drop=2.0)
        def test_fails():
            pass

        @pytest.mark.ftgate("sentiment", max_drop=50.0)
        def test_passes():
            pass

        @pytest.mark.ftgate("sentiment", max_drop=2.0)
        def test_errors(broken):
            pass
    """)
    result = gate_project.runpytest(fake_adapter(fake_flips=6), *_reports(gate_project))
    result.assert_outcomes(passed=1, failed=1, errors=1)
    data = _json(gate_project)
    assert data["summary"]["outcome"] == "error"
    outcomes = {gate["nodeid"].rsplit("::", 1)[1]: gate["verdict"]["outcome"] for gate in data["gates"]}
    assert outcomes == {"test_fails": "fail", "test_passes": "pass", "test_errors": "error"}
    errored = next(gate for gate in data["gates"] if gate["verdict"]["outcome"] == "error")
    assert "RuntimeError: no GPU today" in errored["error"]
    assert _markdown(gate_project).startswith("### \u274c ftgate: ")
    assert "RuntimeError: no GPU today" in _markdown(gate_project)
    result.stdout.fnmatch_lines(
        [
            "ftgate: 1 of 3 gates errored (test_errors), 1 regressed (test_fails)",  # issue 14: tests, not titles
            "*test_errors*RuntimeError: no GPU today*",
        ]
    )


# --- item 6: a marker without a threshold is a measurement, not a gate -----------------------


def test_marker_without_threshold_is_a_measurement(gate_project: pytest.Pytester, fake_adapter: AdapterArg) -> None:
    """Before: a 32.5-point drop read "Sentiment passed"."""
    gate_project.makepyfile(MEASURE)
    result = gate_project.runpytest(fake_adapter(fake_flips=13), *_reports(gate_project))
    result.assert_outcomes(passed=2, warnings=2)  # one warning per test
    text = result.stdout.str()
    assert "passed" not in text.split("= ftgate =", 1)[1].split("\n=")[0]  # nowhere in ftgate's summary
    result.stdout.fnmatch_lines(
        [
            "*FtgateWarning: *test_measure*has no threshold*max_drop=*ftgate_max_drop*",
            "Sentiment (test_measure) *-32.5*measured*",
            "ftgate: all 2 gates measured (no threshold)",
        ]
    )
    data = _json(gate_project)
    assert data["summary"]["outcome"] == "measured"
    assert data["summary"]["measured"] == 2 and data["summary"]["passed"] == 0
    assert {gate["verdict"]["outcome"] for gate in data["gates"]} == {"measured"}
    assert "No threshold: measured, not gated" in data["gates"][0]["verdict"]["reason"]
    markdown = _markdown(gate_project)
    assert "\u2705" not in markdown and " pass" not in markdown
    assert "measured" in markdown.splitlines()[0]


@pytest.mark.parametrize("where", ["ini", "option"])
def test_project_wide_max_drop_makes_it_a_gate(
    gate_project: pytest.Pytester, fake_adapter: AdapterArg, where: str
) -> None:
    gate_project.makepyfile(MEASURE)
    args = [fake_adapter(fake_flips=13)]
    if where == "ini":
        gate_project.makeini("[pytest]\nftgate_backend = fake\nftgate_base = base\nftgate_max_drop = 2\n")
    else:
        args.append(f"{options.MAX_DROP}=2")
    result = gate_project.runpytest(*args)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*Sentiment dropped 32.5 points (100.0 -> 67.5) after fine-tuning; allowed 2.0.*"])
    assert "FtgateWarning" not in result.stdout.str()


def test_project_wide_max_drop_leaves_explicit_thresholds_alone(
    gate_project: pytest.Pytester, fake_adapter: AdapterArg
) -> None:
    gate_project.makepyfile("""
        import pytest

        @pytest.mark.ftgate("sentiment", max_drop=50.0)
        def test_loose():
            pass
    """)
    result = gate_project.runpytest(fake_adapter(fake_flips=13), f"{options.MAX_DROP}=2")
    result.assert_outcomes(passed=1)


# --- item 7: text from data or models cannot drive the terminal or forge Markdown ------------

EVIL_BENCHMARK = """
pytest_ftgate.register_benchmark(
    pytest_ftgate.Benchmark.from_jsonl(
        "evil", Path(__file__).parent / "evil.jsonl",
        system="One word.", template="{q}", answer="a", kind="label",
        choices=("positive", "negative", "neutral"), max_tokens=8, title="<b>x</b>\\nforged",
    )
)
"""
EVIL_ID = "a\x1b[2Jb"


def test_control_characters_and_html_are_escaped_everywhere(
    gate_project: pytest.Pytester, fake_adapter: AdapterArg
) -> None:
    """Before: the raw ESC reached the terminal (clears the screen, then a forged line), the title's
    newline split the progress line and the Markdown heading, its HTML rendered as HTML."""
    gate_project.makeconftest(gate_project.path.joinpath("conftest.py").read_text() + EVIL_BENCHMARK)
    rows = [
        {"id": EVIL_ID, "q": "#0 \x1b[2J\u202e1 passed in 0.01s answer: positive", "a": "positive"},
        *({"id": f"e{i}", "q": f"#{i} fine, answer: negative", "a": "negative"} for i in range(1, 10)),
    ]
    gate_project.path.joinpath("evil.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    gate_project.makepyfile("""
        import pytest

        @pytest.mark.ftgate("evil", max_drop=2.0)
        def test_evil():
            pass
    """)
    result = gate_project.runpytest(
        "--color=no", fake_adapter(fake_flips=1), *_reports(gate_project), "--junitxml=out/junit.xml"
    )
    result.assert_outcomes(failed=1)
    output = result.stdout.str() + result.stderr.str()
    assert "\x1b" not in output and "\u202e" not in output
    assert not [line for line in output.splitlines() if line.startswith("forged")]
    result.stdout.fnmatch_lines(
        [
            r"ftgate: <b>x</b>\nforged base (generate): 10/10 examples*",  # the progress line
            r"*<b>x</b>\nforged dropped 10.0 points*",  # the failure message
            r"*lost a\x1b[[]2Jb: *",
            r"ftgate: <b>x</b>\nforged regressed",  # the summary's headline
        ]
    )
    markdown = _markdown(gate_project)
    heading = markdown.splitlines()[0]
    assert heading == "### \u274c ftgate: &lt;b&gt;x&lt;/b&gt;\\\\nforged regressed"  # shows as \\n
    assert "<b>x</b>" not in markdown and "\x1b" not in markdown and "\u202e" not in markdown
    assert not [line for line in markdown.splitlines() if line.startswith("forged")]
    assert "a\\\\x1b\\[2Jb" in markdown  # the id, escaped for Markdown: a\\x1b\[2Jb
    data = _json(gate_project)  # JSON keeps the raw text; JSON escapes it itself
    assert data["gates"][0]["title"] == "<b>x</b>\nforged"
    assert data["gates"][0]["top_lost"][0]["id"] == EVIL_ID
    assert "\x1b" not in (gate_project.path / "out" / "junit.xml").read_text(encoding="utf-8")


# --- item 8: thresholds must be finite ------------------------------------------------------


def _comparison() -> object:
    def side(label: str, correct: list[bool]) -> EvalResult:
        preds = [Prediction(f"x{i}", "A", "A", "A", ok) for i, ok in enumerate(correct)]
        score = 100.0 * sum(correct) / len(correct)
        return EvalResult("fpb", ModelInfo(label, label), len(correct), score, {}, preds, 0.0)

    return compare(side("base", [True] * 10), side("tuned", [True] * 7 + [False] * 3))


@pytest.mark.parametrize(
    "thresholds",
    [{"max_drop": float("nan")}, {"max_drop": float("inf")}, {"min_gain": float("nan")}, {"min_gain": float("-inf")}],
    ids=["nan-max-drop", "inf-max-drop", "nan-min-gain", "-inf-min-gain"],
)
def test_verdict_refuses_non_finite_thresholds(thresholds: dict[str, float]) -> None:
    """Before: accepted; the verdict read "allowed nan" and always failed."""
    comparison = _comparison()
    (key,) = thresholds
    with pytest.raises(ConfigError, match=f"{key} must be a finite number of points"):
        comparison.verdict(**thresholds)  # type: ignore[attr-defined]


def test_assertions_refuse_non_finite_thresholds() -> None:
    comparison = _comparison()
    with pytest.raises(ConfigError, match="max_drop must be a finite number"):
        comparison.assert_no_regression(float("nan"))  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="min_gain must be a finite number"):
        comparison.assert_improves(float("inf"))  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "two"])
def test_project_wide_max_drop_must_be_finite_and_not_negative(gate_project: pytest.Pytester, value: str) -> None:
    gate_project.makepyfile(MEASURE)
    result = gate_project.runpytest(f"{options.MAX_DROP}={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{options.MAX_DROP} must be a finite number of points >= 0*got*"])
