"""reporting.terminal: the terminal summary, on records alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pytest_ftgate import reporting
from pytest_ftgate.reporting import GateRecord

MakeRecord = Callable[..., GateRecord]


def test_terminal_summary_with_markup(records: list[GateRecord], writer: Callable[[bool], Any]) -> None:
    writer = writer(True)
    reporting.write_summary(writer, records)
    kind, title, markup = writer.calls[0]
    assert (kind, title, markup) == ("sep", "= ftgate", {"bold": True})
    lines = writer.lines()
    header = lines[0].split()
    assert header == ["benchmark", "base", "tuned", "delta", "95%", "CI", "n", "verdict", "time"]
    rows = {text.split()[0]: (text, kw) for _, text, kw in writer.calls[2:5]}
    assert rows["MedMCQA"][1] == {"green": True}
    assert rows["FPB"][1] == {"red": True, "bold": True}
    fpb_cells = rows["FPB"][0].split()
    assert fpb_cells[1:4] == ["78.8", "50.4", "-28.4"]
    assert fpb_cells[-3:] == ["970", "fail", "42.8s"]
    assert "ftgate: 1 of 3 benchmarks regressed (FPB)" in lines
    headline = next(kw for _, text, kw in writer.calls if text.startswith("ftgate: 1 of 3"))
    assert headline == {"red": True, "bold": True}
    assert any("FPB" in line and "don't fine-tune" in line and "forgetting" in line for line in lines)
    assert any("MedMCQA" in line and "train aggressively" in line and "improved" in line for line in lines)
    # columns line up: every table row has the same width up to the time column
    widths = {len(text) for text in lines[:4]}
    assert len(widths) == 1


def test_terminal_summary_without_markup(records: list[GateRecord], writer: Callable[[bool], Any]) -> None:
    writer = writer(False)
    reporting.write_summary(writer, records)
    assert all(markup == {} for _, _, markup in writer.calls)
    assert sum("[" in line and "]" in line for line in writer.lines()) == 3  # one CI per row


def test_terminal_summary_inconclusive_and_nothing(make_record: MakeRecord, writer: Callable[[bool], Any]) -> None:
    unsure = make_record(n=100, lost=3, gained=1, both=60, max_drop=2.0, strict=True)
    assert unsure.outcome == "inconclusive"
    lines = reporting.summary_lines([unsure], markup=True)
    assert lines[1][1] == {"yellow": True}
    writer = writer(True)
    reporting.write_summary(writer, [])
    assert writer.calls == []


def test_terminal_labels_tell_gates_of_one_benchmark_apart(make_record: MakeRecord) -> None:
    a = make_record(nodeid="t.py::test_no_forgetting")
    b = make_record(nodeid="t.py::test_macro_f1")
    text = [line for line, _ in reporting.summary_lines([a, b], markup=False)]
    assert text[1].startswith("fpb (test_no_forgetting)") and text[2].startswith("fpb (test_macro_f1)")
    assert sum("measured:" in line for line in text) == 1  # the framework speaks per benchmark


def test_test_that_failed_on_its_own_assertion_is_not_green(records: list[GateRecord]) -> None:
    med = records[0]
    med.test_outcome = "failed"
    lines = reporting.summary_lines([med], markup=True)
    assert "pass (test failed)" in lines[1][0] and lines[1][1] == {"red": True, "bold": True}
    assert reporting.headline([med]) == "MedMCQA passed (1 test failed on its own assertions)"


def test_terminal_summary_lists_written_files_and_takes_a_reporter(records: list[GateRecord]) -> None:
    class Reporter:  # pytest's TerminalReporter: write_sep instead of sep
        hasmarkup = False

        def __init__(self) -> None:
            self.out: list[str] = []

        def write_sep(self, sep: str, title: str | None = None, **markup: Any) -> None:
            self.out.append(f"{sep * 3} {title} {sep * 3}")

        def line(self, msg: str, **markup: Any) -> None:
            self.out.append(msg)

    reporter = Reporter()
    reporting.write_summary(
        reporter, records[:1], written=[("JSON report", "out/ftgate.json")], errors=["could not write x.png"]
    )
    assert reporter.out[0] == "=== ftgate ==="
    assert reporter.out[-2:] == ["ftgate: JSON report written to out/ftgate.json", "ftgate: could not write x.png"]


def test_error_is_red_with_its_text_in_terminal_and_markdown(
    records: list[GateRecord], errored: Callable[..., GateRecord]
) -> None:
    lines = reporting.summary_lines([records[0], errored()], markup=True)
    row = next((text, kw) for text, kw in lines if text.startswith("FPB"))
    assert row[0].split() == ["FPB", "-", "-", "-", "-", "-", "error", "-"] and row[1] == {"red": True, "bold": True}
    said = [(text, kw) for text, kw in lines if "errored:" in text]
    assert said == [("ftgate: tests/test_gate.py::test_gate[fpb] errored: adapter lora has no effect", row[1])]
    text = reporting.to_markdown([records[0], errored()])
    assert text.startswith("### \u274c ftgate: 1 of 2 benchmarks errored (FPB)")
    assert "> [!CAUTION]\n> `tests/test_gate.py::test_gate[fpb]` errored: adapter lora has no effect" in text
    assert "| FPB | \u2014 | \u2014 | \u2014 | \u2014 | \u2014 | \u274c error |" in text
    assert reporting.junit_properties(errored())[1:] == [
        ("ftgate_verdict", "error"),
        ("ftgate_error", "adapter lora has no effect"),
    ]


def test_baseline_note_is_shown_and_escaped(records: list[GateRecord]) -> None:
    records[0].baseline_note = "baseline re-recorded: 35.5 -> 36.1\x1b[2J"
    assert GateRecord.from_dict(json.loads(json.dumps(records[0].to_dict()))) == records[0]
    lines = [text for text, _ in reporting.summary_lines(records, markup=False)]
    assert "ftgate: MedMCQA: baseline re-recorded: 35.5 -> 36.1\\x1b[2J" in lines
    text = reporting.to_markdown(records)
    assert "- MedMCQA: baseline re-recorded: 35.5 -&gt; 36.1\\\\x1b\\[2J" in text
    assert ("ftgate_baseline", "baseline re-recorded: 35.5 -> 36.1\\x1b[2J") in reporting.junit_properties(records[0])


def test_text_from_data_is_escaped_in_every_renderer(make_record: MakeRecord) -> None:
    evil = make_record(
        "fpb",
        title="<b>x</b>\nforged\u202e",
        texts={0: ("q\x1b[2J", "A", "A\x9b", "B\x07")},
    )
    lines = "\n".join(text for text, _ in reporting.summary_lines([evil], markup=False))
    assert "\x1b" not in lines and "\u202e" not in lines and "\nforged" not in lines
    assert "ftgate: <b>x</b>\\nforged\\u202e regressed" in lines
    text = reporting.to_markdown([evil])
    assert text.splitlines()[0] == "### \u274c ftgate: &lt;b&gt;x&lt;/b&gt;\\\\nforged\\\\u202e regressed"
    assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) <= 0x9F for c in text)
    assert "q\\\\x1b\\[2J" in text
    assert reporting.to_json([evil])["gates"][0]["top_lost"][0]["text"] == "q\x1b[2J"  # raw: JSON escapes it


# --- issues 13 and 14: notes, early stop, drift, shared times ---------------------------------


def test_a_shared_evaluation_shows_its_time_once(make_comparison: Callable[..., Any]) -> None:
    """Issue 14: three tests on one FPB comparison repeated its time on three rows."""
    from pytest_ftgate.reporting import GateRecord as Record

    comparison = make_comparison("fpb", title="FPB")
    shared = [
        Record.from_comparison(comparison, comparison.verdict(max_drop=2.0), nodeid=f"t.py::test_{name}", max_drop=2.0)
        for name in "abc"
    ]
    other = make_comparison("medmcqa", title="MedMCQA")
    med = Record.from_comparison(other, other.verdict(max_drop=2.0), nodeid="t.py::test_med", max_drop=2.0)
    rows = [text for text, _ in reporting.summary_lines([*shared, med], markup=False)[1:5]]
    assert [row.split()[-1] for row in rows] == ["42.8s", "shared", "shared", "42.8s"]
    assert len({len(row) for row in rows}) == 1  # still aligned
    assert "1m26s of evaluation" in reporting.to_markdown([*shared, med])  # 2 x 42.75 s, not 4 x


def test_notes_early_stop_and_drift_are_shown_escaped(make_record: MakeRecord) -> None:
    """Issue 13: Gate.notes were collected but never shown; early stop and drift were not reported."""
    from pytest_ftgate.results import EarlyStop

    rec = make_record("fpb", title="FPB")
    rec.early = EarlyStop(50, 970, "fail", (-12.5, -3.25), 2.0, None, False)
    rec.drift = {"gold_logprob_delta": -0.25, "kl": 0.0123, "n": 40.0}
    rec.notes = ["FPB: generate mode (the fake\x1b[2J backend has no log-probabilities)"]
    again = make_record("fpb", title="FPB", nodeid="t.py::test_other")
    again.notes = list(rec.notes)
    lines = [text for text, _ in reporting.summary_lines([rec, again], markup=False)]
    assert (
        "ftgate: FPB (test_gate): stopped early after 50 of 970 examples: the complete run's verdict (fail) "
        "could no longer change (anytime-valid interval -12.5 to -3.2)" in lines
    )
    drift = "drift: gold answer log-prob -0.250, KL(base||tuned) 0.0123 over 40 examples"
    assert f"ftgate: FPB (test_gate): {drift}" in lines
    said = [line for line in lines if "generate mode" in line]
    assert said == ["ftgate: FPB: generate mode (the fake\\x1b[2J backend has no log-probabilities)"]  # once
    text = reporting.to_markdown([rec, again])
    assert "**Notes**" in text
    assert "- FPB (test\\_gate): stopped early after 50 of 970 examples" in text
    assert "- FPB: generate mode (the fake\\\\x1b\\[2J backend has no log-probabilities)" in text
    assert text.count("generate mode (the fake") == 1 and "\x1b" not in text
