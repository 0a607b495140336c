"""The reports through the plugin (issues 13 and 14): the summary names the tests and shows a
shared time once, ``--ftgate-flips`` writes every lost and gained example, the gate's notes and
early stop reach every report (also from xdist workers). Fake backend of ``gate_project``."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from pytest_ftgate import options

AdapterArg = Callable[..., str]

SEVERAL = """
import pytest

@pytest.mark.ftgate("sentiment", max_drop=2.0)
def test_plain():
    pass

@pytest.mark.ftgate(["sentiment"], max_drop=2.0)
def test_listed():
    pass

@pytest.mark.ftgate("sentiment", max_drop=50.0)
def test_lenient():
    pass
"""


def _base_wrong(project: pytest.Pytester, count: int) -> None:
    """Mark the last ``count`` examples of the project's benchmark as ones the base gets wrong."""
    path = project.path / "sentiment.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row in rows[-count:]:
        row["q"] += " (base wrong)"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_summary_names_the_tests_and_shows_a_shared_time_once(
    gate_project: pytest.Pytester, fake_adapter: AdapterArg
) -> None:
    """Before: "ftgate: 2 of 3 gates regressed (Sentiment, Sentiment)", and the one shared
    evaluation's time on all three rows."""
    gate_project.makepyfile(SEVERAL)
    result = gate_project.runpytest(fake_adapter(fake_flips=6))
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "benchmark *time",
            "Sentiment (test_lenient) *pass *[0-9]s",
            "Sentiment (test_listed) *fail *shared",
            "Sentiment (test_plain) *fail *shared",
            "ftgate: 2 of 3 gates regressed (test_listed[[]sentiment], test_plain)",
        ]
    )


def test_flips_file_holds_every_lost_and_gained_example(
    gate_project: pytest.Pytester, fake_adapter: AdapterArg
) -> None:
    """Before: 3 lost examples in the failure message and 5 in the JSON report, no more."""
    _base_wrong(gate_project, 4)
    gate_project.makepyfile(SEVERAL)
    flips = gate_project.path / "out" / "flips.jsonl"
    result = gate_project.runpytest(fake_adapter(fake_flips=7, fake_fixes=True), f"{options.FLIPS}=out/flips.jsonl")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([f"*and 4 more lost (all of them are in {flips})", f"*written to {flips}"])
    rows = [json.loads(line) for line in flips.read_text(encoding="utf-8").splitlines()]
    by_test: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_test.setdefault(str(row["nodeid"]).rsplit("::", 1)[1], []).append(row)
    assert sorted(by_test) == ["test_lenient", "test_listed[sentiment]", "test_plain"]  # passing gates too
    plain = by_test["test_plain"]
    assert [row["direction"] for row in plain] == ["lost"] * 7 + ["gained"] * 4
    assert set(plain[0]) == {
        "nodeid",
        "benchmark",
        "id",
        "direction",
        "gold",
        "base_answer",
        "tuned_answer",
        "text",
        "base_output",
        "tuned_output",
    }
    first = plain[0]
    assert (first["id"], first["benchmark"], first["gold"], first["base_answer"]) == (
        "s000",
        "sentiment",
        "positive",
        "positive",
    )
    assert first["tuned_answer"] == "negative" and first["text"].startswith("#0 sentence")
    gained = plain[-1]
    assert gained["id"] == "s039" and gained["tuned_answer"] == gained["gold"] != gained["base_answer"]


def test_without_the_option_the_message_says_how_to_see_every_lost_example(
    gate_project: pytest.Pytester, fake_adapter: AdapterArg
) -> None:
    gate_project.makepyfile(SEVERAL)
    result = gate_project.runpytest(fake_adapter(fake_flips=7), "-k", "test_plain")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*and 4 more lost ({options.FLIPS}=PATH writes all of them)"])
    assert "lost and gained examples written" not in result.stdout.str()


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_notes_and_early_stop_reach_every_report(
    gate_project: pytest.Pytester, fake_adapter: AdapterArg, workers: list[str]
) -> None:
    """Before: Gate.notes were never shown, and the JSON record had no early stop (nor drift)."""
    if workers:
        pytest.importorskip("xdist")
    gate_project.makepyfile(SEVERAL)
    result = gate_project.runpytest(
        *workers,
        fake_adapter(fake_flips=6),
        f"{options.MODE}=logprob",  # the fake backend has no log-probabilities: the gate notes it
        options.EARLY_STOP,
        f"{options.REPORT}=out/r.json",
        f"{options.MARKDOWN}=out/r.md",
        "-k",
        "test_plain",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["ftgate: Sentiment: early stop: all 40 examples evaluated*", "ftgate: Sentiment: generate mode*"]
    )
    (gate,) = json.loads((gate_project.path / "out" / "r.json").read_text(encoding="utf-8"))["gates"]
    assert gate["early_stop"]["used"] == gate["early_stop"]["total"] == 40
    assert gate["early_stop"]["outcome"] == "fail"
    assert len(gate["notes"]) == 1 and "generate mode" in gate["notes"][0]
    markdown = (gate_project.path / "out" / "r.md").read_text(encoding="utf-8")
    assert "**Notes**" in markdown and "generate mode" in markdown
    assert "early stop: all 40 examples evaluated" in markdown
