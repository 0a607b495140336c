"""pytest_ftgate.report: records, JSON, Markdown, terminal summary, PNG chart, JUnit properties."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate import report
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.report import GateRecord
from pytest_ftgate.results import EvalResult, ModelInfo, Prediction, compare

try:  # loaded before any pytester run of this process: a run that imports numpy (adapter
    import numpy  # noqa: F401  inspection does) would otherwise unload it, and numpy's C
except ImportError:  # extension cannot be imported twice (the plot tests below need it)
    pass

BASE = ModelInfo("gemma-4-e4b-it-4bit", "b" * 64)
TUNED = ModelInfo("gemma-4-e4b-it-4bit+lora", "t" * 64)


def pair(
    benchmark: str,
    *,
    n: int,
    lost: int,
    gained: int,
    both: int,
    title: str = "",
    texts: dict[int, tuple[str, str, str, str]] | None = None,
) -> tuple[EvalResult, EvalResult]:
    """Base and tuned results: ``lost`` examples only base gets right, ``gained`` only tuned,
    ``both`` both, the rest neither. ``texts[i] = (question, gold, base_out, tuned_out)``."""
    texts = texts or {}
    base_preds, tuned_preds = [], []
    for i in range(n):
        if i < lost:
            b_ok, t_ok = True, False
        elif i < lost + gained:
            b_ok, t_ok = False, True
        elif i < lost + gained + both:
            b_ok, t_ok = True, True
        else:
            b_ok, t_ok = False, False
        question, gold, b_out, t_out = texts.get(i, (f"question {i}", "A", "A" if b_ok else "B", "A" if t_ok else "C"))
        base_preds.append(Prediction(f"{benchmark}-{i:04d}", b_out, b_out[:1] or None, gold, b_ok, question))
        tuned_preds.append(Prediction(f"{benchmark}-{i:04d}", t_out, t_out[:1] or None, gold, t_ok, question))

    def result(model: ModelInfo, preds: list[Prediction], seconds: float) -> EvalResult:
        acc = 100.0 * sum(p.correct for p in preds) / n
        return EvalResult(
            benchmark, model, n, acc, {"accuracy": acc, "unparsed_rate": 0.0}, preds, seconds, title=title
        )

    return result(BASE, base_preds, 12.5), result(TUNED, tuned_preds, 30.25)


def record(
    benchmark: str = "fpb",
    *,
    n: int = 200,
    lost: int = 60,
    gained: int = 4,
    both: int = 100,
    max_drop: float | None = 2.0,
    min_gain: float | None = None,
    strict: bool = False,
    title: str = "",
    nodeid: str | None = None,
    texts: dict[int, tuple[str, str, str, str]] | None = None,
) -> GateRecord:
    base, tuned = pair(benchmark, n=n, lost=lost, gained=gained, both=both, title=title, texts=texts)
    comparison = compare(base, tuned)
    verdict = comparison.verdict(max_drop=max_drop, min_gain=min_gain, strict=strict)
    return GateRecord.from_comparison(
        comparison,
        verdict,
        nodeid=nodeid or f"tests/test_gate.py::test_gate[{benchmark}]",
        max_drop=max_drop,
        min_gain=min_gain,
        strict=strict,
    )


@pytest.fixture
def records() -> list[GateRecord]:
    """The seed study's picture: MedMCQA and ConvFinQA improve, FPB forgets."""
    return [
        record("medmcqa", title="MedMCQA", n=499, lost=40, gained=74, both=137, max_drop=2.0),
        record(
            "fpb",
            title="FPB",
            n=970,
            lost=300,
            gained=25,
            both=464,
            max_drop=2.0,
            texts={
                0: ("Sales | rose\n12% in Q3 <b>", "positive", "positive", "neutral **really**"),
                1: ("Profit fell.", "negative", "negative", ""),
            },
        ),
        record("convfinqa", title="ConvFinQA", n=1490, lost=20, gained=243, both=68, min_gain=5.0, max_drop=None),
    ]


class FakeWriter:
    """The part of pytest's TerminalWriter that ``write_summary`` uses."""

    def __init__(self, hasmarkup: bool) -> None:
        self.hasmarkup = hasmarkup
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def line(self, s: str = "", **markup: Any) -> None:
        self.calls.append(("line", s, markup))

    def sep(self, sep: str, title: str | None = None, **markup: Any) -> None:
        self.calls.append(("sep", f"{sep} {title}", markup))

    def lines(self) -> list[str]:
        return [text for kind, text, _ in self.calls if kind == "line"]


# --- record ----------------------------------------------------------------------------------


def test_record_from_comparison(records: list[GateRecord]) -> None:
    med, fpb, conv = records
    assert (med.benchmark, med.title, med.n) == ("medmcqa", "MedMCQA", 499)
    assert med.base == pytest.approx(100 * 177 / 499)
    assert med.tuned == pytest.approx(100 * 211 / 499)
    assert med.delta == pytest.approx(med.tuned - med.base)
    assert med.ci[0] < med.delta < med.ci[1]
    assert (med.lost, med.gained, med.outcome) == (40, 74, "pass")
    assert fpb.outcome == "fail" and "FPB dropped" in fpb.reason
    assert (fpb.max_drop, fpb.min_gain, fpb.strict) == (2.0, None, False)
    assert conv.outcome == "pass" and conv.min_gain == 5.0
    assert len(fpb.top_lost) == report.TOP_LOST
    assert fpb.top_lost[0].text.startswith("Sales | rose\n12%")
    assert fpb.top_lost[0].tuned_output == "neutral **really**"
    assert fpb.seconds == pytest.approx(42.75)
    assert fpb.base_model == BASE.label and fpb.tuned_fingerprint == TUNED.fingerprint
    assert set(fpb.base_metrics) == {"accuracy", "unparsed_rate"}
    assert fpb.mode == "generate"


def test_record_clips_long_texts() -> None:
    long = "word " * 400
    rec = record(texts={0: (long, "positive", long, long)})
    assert len(rec.top_lost[0].text) <= report.TEXT_WIDTH
    assert len(rec.top_lost[0].tuned_output) <= report.OUTPUT_WIDTH
    assert rec.top_lost[0].text.endswith("\u2026")


def test_record_round_trip_through_json(records: list[GateRecord]) -> None:
    for rec in records:
        rec.test_outcome = "failed" if rec.outcome == "fail" else "passed"
        data = json.loads(json.dumps(rec.to_dict()))  # what xdist's workeroutput carries
        assert GateRecord.from_dict(data) == rec


def test_collate_dedupes_and_sorts(records: list[GateRecord]) -> None:
    again = GateRecord.from_dict(records[0].to_dict())
    again.outcome = "fail"
    merged = report.collate([records[2], records[0], records[1], again])
    assert [r.nodeid for r in merged] == sorted(r.nodeid for r in records)
    assert merged[1].outcome == "fail"  # the later record of a node id wins


# --- JSON ------------------------------------------------------------------------------------


def test_json_schema_fields(records: list[GateRecord], tmp_path: Path) -> None:
    meta = report.make_meta(
        started=0.0,
        backend="mlx",
        base="mlx-community/gemma-4-e4b-it-4bit",
        adapter="adapters/run7",
        confidence=0.95,
        limit=500,
        mode="generate",
        strict=False,
    )
    path = report.write_json(tmp_path / "out" / "ftgate.json", records, meta=meta)
    data = json.loads(path.read_text())
    assert data["schema"] == "pytest-ftgate/report" and data["version"] == 1
    assert set(data["meta"]) >= {
        "ftgate",
        "started",
        "finished",
        "backend",
        "base",
        "adapter",
        "candidate",
        "confidence",
        "limit",
        "mode",
        "strict",
    }
    assert data["meta"]["started"] == "1970-01-01T00:00:00Z"
    # measured and errors: counts added with the "measured" and "error" verdicts (issue 12)
    assert data["summary"] == {
        "gates": 3,
        "passed": 2,
        "failed": 1,
        "inconclusive": 0,
        "measured": 0,
        "errors": 0,
        "outcome": "fail",
    }
    gate = data["gates"][1]
    assert set(gate) == {
        "nodeid",
        "benchmark",
        "title",
        "mode",
        "error",  # null unless the comparison could not be computed (issue 12)
        "baseline_note",  # null unless the base side came from a stored baseline
        "n",
        "base",
        "tuned",
        "delta",
        "ci",
        "confidence",
        "p_value",
        "lost",
        "gained",
        "thresholds",
        "verdict",
        "test_outcome",
        "seconds",
        "top_lost",
        "advice",
    }
    assert set(gate["base"]) == {"score", "model", "fingerprint", "metrics", "seconds"}
    assert gate["thresholds"] == {"max_drop": 2.0, "min_gain": None, "strict": False}
    assert gate["verdict"]["outcome"] == "fail"
    assert gate["advice"]["framework"] == report.advice(records[1].base)
    assert gate["advice"]["measured"].startswith("regressed")
    assert set(gate["top_lost"][0]) == {"id", "text", "gold", "base_output", "tuned_output"}
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temporary file
    meta_back, back = report.load_json(path)
    assert back == records and meta_back == meta


def test_report_files_get_the_usual_permissions(records: list[GateRecord], tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    for path in (report.write_json(tmp_path / "r.json", records), report.write_markdown(tmp_path / "r.md", records)):
        assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_load_json_rejects_other_versions(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema": report.SCHEMA, "version": 99, "gates": []}))
    with pytest.raises(ConfigError, match="version 99"):
        report.load_json(path)
    path.write_text("{}")
    with pytest.raises(ConfigError, match="not an ftgate report"):
        report.load_json(path)


def test_undefined_metric_is_null_in_json(records: list[GateRecord], tmp_path: Path) -> None:
    records[0].tuned_metrics["macro_f1"] = float("nan")
    path = report.write_json(tmp_path / "r.json", records)
    assert json.loads(path.read_text())["gates"][0]["tuned"]["metrics"]["macro_f1"] is None


def test_empty_run_json() -> None:
    data = report.to_json([], meta={"base": "x"})
    assert data["summary"]["outcome"] == "pass" and data["gates"] == []


# --- advice ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "words"),
    [
        (0.0, "train aggressively"),
        (39.9, "train aggressively"),
        (40.0, "train conservatively, monitor"),
        (70.0, "train conservatively, monitor"),
        (70.1, "don't fine-tune"),
        (100.0, "very conservative parameters"),
    ],
)
def test_advice_thresholds(score: float, words: str) -> None:
    assert words in report.advice(score)


def test_outcome_note(records: list[GateRecord]) -> None:
    med, fpb, _ = records
    assert report.outcome_note(med) == f"improved +{med.delta:.1f}"
    assert report.outcome_note(fpb) == f"regressed {fpb.delta:.1f} (forgetting)"
    flat = record(n=100, lost=2, gained=1, both=50)
    assert report.outcome_note(flat).startswith("no clear change (-1.0, interval ")


def test_headline_wording(records: list[GateRecord]) -> None:
    assert report.headline(records) == "1 of 3 benchmarks regressed (FPB)"
    assert report.headline([records[0], records[2]]) == "all 2 benchmarks passed"
    assert report.headline([records[0]]) == "MedMCQA passed"
    short = record("medmcqa", title="MedMCQA", n=100, lost=0, gained=1, both=40, max_drop=None, min_gain=5.0)
    assert report.headline([short]) == "MedMCQA failed"
    assert report.headline([records[1]]) == "FPB regressed"
    unsure = record("sentiment", title="Sentiment", n=100, lost=3, gained=1, both=60, max_drop=2.0, strict=True)
    assert report.headline([unsure]) == "Sentiment inconclusive"
    assert report.headline([records[0], unsure]) == "1 of 2 benchmarks inconclusive"
    assert report.headline([records[1], unsure]) == "1 of 2 benchmarks regressed (FPB), 1 inconclusive"
    assert report.headline([]) == "no gates ran"


# --- terminal --------------------------------------------------------------------------------


def test_terminal_summary_with_markup(records: list[GateRecord]) -> None:
    writer = FakeWriter(hasmarkup=True)
    report.write_summary(writer, records)
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


def test_terminal_summary_without_markup(records: list[GateRecord]) -> None:
    writer = FakeWriter(hasmarkup=False)
    report.write_summary(writer, records)
    assert all(markup == {} for _, _, markup in writer.calls)
    assert sum("[" in line and "]" in line for line in writer.lines()) == 3  # one CI per row


def test_terminal_summary_inconclusive_and_nothing() -> None:
    unsure = record(n=100, lost=3, gained=1, both=60, max_drop=2.0, strict=True)
    assert unsure.outcome == "inconclusive"
    lines = report.summary_lines([unsure], markup=True)
    assert lines[1][1] == {"yellow": True}
    writer = FakeWriter(hasmarkup=True)
    report.write_summary(writer, [])
    assert writer.calls == []


def test_terminal_labels_tell_gates_of_one_benchmark_apart() -> None:
    a = record(nodeid="t.py::test_no_forgetting")
    b = record(nodeid="t.py::test_macro_f1")
    text = [line for line, _ in report.summary_lines([a, b], markup=False)]
    assert text[1].startswith("fpb (test_no_forgetting)") and text[2].startswith("fpb (test_macro_f1)")
    assert sum("measured:" in line for line in text) == 1  # the framework speaks per benchmark


def test_test_that_failed_on_its_own_assertion_is_not_green(records: list[GateRecord]) -> None:
    med = records[0]
    med.test_outcome = "failed"
    lines = report.summary_lines([med], markup=True)
    assert "pass (test failed)" in lines[1][0] and lines[1][1] == {"red": True, "bold": True}
    assert report.headline([med]) == "MedMCQA passed (1 test failed on its own assertions)"


# --- Markdown --------------------------------------------------------------------------------


def test_markdown_table_and_details(records: list[GateRecord]) -> None:
    meta = report.make_meta(base="mlx-community/gemma-4-e4b-it-4bit", adapter="adapters/run7", backend="mlx")
    text = report.to_markdown(records, meta=meta)
    lines = text.splitlines()
    assert lines[0] == "### \u274c ftgate: 1 of 3 benchmarks regressed (FPB)"
    assert "Base `mlx-community/gemma-4-e4b-it-4bit` vs adapter `adapters/run7`" in text
    assert "| Benchmark | Base | Tuned | \u0394 | 95% CI | n | Verdict |" in lines
    fpb_row = next(line for line in lines if line.startswith("| FPB | 78.8"))
    assert "| **-28.4** |" in fpb_row and "| 970 |" in fpb_row and "fail (max drop 2)" in fpb_row
    assert fpb_row.count(" | ") == 6  # seven cells
    conv_row = next(line for line in lines if line.startswith("| ConvFinQA | 5.9"))
    assert "pass (min gain 5)" in conv_row
    assert any(
        line.startswith("| MedMCQA | 35.5 | baseline below 40%: train aggressively | improved") for line in lines
    )
    # one details block, for the failing benchmark only
    assert text.count("<details>") == 1 and text.count("</details>") == 1
    assert "<summary>\u274c FPB: 300 examples lost, 25 gained; first 5 lost below</summary>" in text
    details = text[text.index("<details>") :]
    assert "FPB dropped 28.4 points" in details


def test_markdown_escapes_cells(records: list[GateRecord]) -> None:
    text = report.to_markdown(records)
    row = next(line for line in text.splitlines() if "<sub>fpb-0000</sub>" in line)
    assert row.startswith("| Sales \\| rose<br>12% in Q3 &lt;b&gt;<br><sub>fpb-0000</sub> | positive |")
    assert "neutral \\*\\*really\\*\\*" in row
    assert row.count(" | ") == 3  # four cells: the pipe inside the text is escaped
    empty = next(line for line in text.splitlines() if "<sub>fpb-0001</sub>" in line)
    assert empty.endswith("| <i>(empty reply)</i> |")  # said so, not a blank cell


def test_markdown_all_passed_and_empty(records: list[GateRecord]) -> None:
    text = report.to_markdown([records[0]])
    assert text.startswith("### \u2705 ftgate: MedMCQA passed")
    assert "<details>" not in text
    assert report.to_markdown([]).startswith("### \u2705 ftgate: no gates ran")


def test_write_markdown_appends_to_step_summary(
    records: list[GateRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    report.write_markdown(summary, records)
    assert summary.read_text().startswith("earlier step\n### ")
    other = report.write_markdown(tmp_path / "x" / "ftgate.md", records)
    report.write_markdown(other, records)
    assert other.read_text().count("### ") == 1  # replaced, not appended


# --- PNG -------------------------------------------------------------------------------------


def test_plot_is_a_png(records: list[GateRecord], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = report.write_plot(tmp_path / "plots" / "ftgate.png", records)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert 800 <= width <= 2400 and 500 <= height <= 1200
    assert 10_000 < len(data) < 1_000_000
    assert not list(path.parent.glob("*.tmp"))


def test_plot_handles_one_and_repeated_benchmarks(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    a = record(nodeid="t.py::a", max_drop=2.0)
    b = record(nodeid="t.py::b", max_drop=None, min_gain=1.0)
    assert report.write_plot(tmp_path / "one.png", [a]).read_bytes()[:4] == b"\x89PNG"
    assert report.write_plot(tmp_path / "two.png", [a, b]).read_bytes()[:4] == b"\x89PNG"
    assert report.write_plot(tmp_path / "none.png", []).read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_says_how_to_install(
    records: list[GateRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'pytest-ftgate\[plot\]'"):
        report.write_plot(tmp_path / "x.png", records)
    assert not (tmp_path / "x.png").exists()


# --- JUnit -----------------------------------------------------------------------------------


def test_junit_properties(records: list[GateRecord]) -> None:
    fpb = records[1]
    props = report.junit_properties(fpb)
    names = [name for name, _ in props]
    assert names == [
        "ftgate_benchmark",
        "ftgate_base",
        "ftgate_tuned",
        "ftgate_delta",
        "ftgate_ci_low",
        "ftgate_ci_high",
        "ftgate_n",
        "ftgate_lost",
        "ftgate_gained",
        "ftgate_p_value",
        "ftgate_verdict",
    ]
    values = dict(props)
    assert all(isinstance(v, str) for v in values.values())
    assert values["ftgate_benchmark"] == "fpb"
    assert values["ftgate_base"] == "78.76" and values["ftgate_tuned"] == "50.41"
    assert float(values["ftgate_delta"]) == pytest.approx(fpb.delta, abs=0.005)
    assert float(values["ftgate_ci_low"]) < float(values["ftgate_delta"]) < float(values["ftgate_ci_high"])
    assert (values["ftgate_n"], values["ftgate_lost"], values["ftgate_gained"]) == ("970", "300", "25")
    assert float(values["ftgate_p_value"]) < 1e-10
    assert values["ftgate_verdict"] == "fail"


def test_report_module_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, pytest_ftgate.report; print('matplotlib' in sys.modules, 'pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "False"


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
    report.write_summary(
        reporter, records[:1], written=[("JSON report", "out/ftgate.json")], errors=["could not write x.png"]
    )
    assert reporter.out[0] == "=== ftgate ==="
    assert reporter.out[-2:] == ["ftgate: JSON report written to out/ftgate.json", "ftgate: could not write x.png"]


# --- errored gates, measurements, baseline notes, escaping (issue 12) ------------------------


def errored(nodeid: str = "tests/test_gate.py::test_gate[fpb]") -> GateRecord:
    return GateRecord.from_error(
        nodeid=nodeid, benchmark="fpb", title="FPB", error="adapter lora has no effect", max_drop=2.0
    )


def test_error_record_travels_through_json_with_null_numbers() -> None:
    rec = errored()
    data = json.loads(json.dumps(rec.to_dict(), allow_nan=False))  # what xdist's workeroutput carries
    assert (data["verdict"]["outcome"], data["error"], data["test_outcome"]) == (
        "error",
        "adapter lora has no effect",
        "error",
    )
    assert data["delta"] is None and data["ci"] == [None, None] and data["base"]["score"] is None
    assert data["advice"] == {"framework": None, "measured": None}
    back = GateRecord.from_dict(data)
    assert back.to_dict() == rec.to_dict()  # NaN != NaN: compare the plain data


def test_error_outranks_every_other_outcome(records: list[GateRecord]) -> None:
    assert report.overall_outcome([*records, errored()]) == "error"
    assert report.headline([errored()]) == "FPB errored"
    assert report.headline([*records, errored("x.py::t")]) == "1 of 4 gates errored (FPB), 1 regressed (FPB)"
    data = report.to_json([records[0], errored()])
    assert data["summary"]["outcome"] == "error" and data["summary"]["errors"] == 1


def test_error_is_red_with_its_text_in_terminal_and_markdown(records: list[GateRecord]) -> None:
    lines = report.summary_lines([records[0], errored()], markup=True)
    row = next((text, kw) for text, kw in lines if text.startswith("FPB"))
    assert row[0].split() == ["FPB", "-", "-", "-", "-", "-", "error", "-"] and row[1] == {"red": True, "bold": True}
    said = [(text, kw) for text, kw in lines if "errored:" in text]
    assert said == [("ftgate: tests/test_gate.py::test_gate[fpb] errored: adapter lora has no effect", row[1])]
    text = report.to_markdown([records[0], errored()])
    assert text.startswith("### \u274c ftgate: 1 of 2 benchmarks errored (FPB)")
    assert "> [!CAUTION]\n> `tests/test_gate.py::test_gate[fpb]` errored: adapter lora has no effect" in text
    assert "| FPB | \u2014 | \u2014 | \u2014 | \u2014 | \u2014 | \u274c error |" in text
    assert report.junit_properties(errored())[1:] == [
        ("ftgate_verdict", "error"),
        ("ftgate_error", "adapter lora has no effect"),
    ]


def test_measurement_is_not_a_pass() -> None:
    measured = record("fpb", title="FPB", n=100, lost=33, gained=0, both=60, max_drop=None)
    assert measured.outcome == "measured"
    assert report.overall_outcome([measured]) == "measured"
    assert report.headline([measured]) == "FPB measured (no threshold)"
    gate = record("medmcqa", title="MedMCQA", n=100, lost=0, gained=0, both=60)
    assert report.overall_outcome([measured, gate]) == "pass"  # the one gate passed
    assert report.headline([measured, gate]) == "1 of 2 benchmarks passed, 1 measured (no threshold)"
    text = report.to_markdown([measured])
    assert text.startswith("### \U0001f4cf ftgate: FPB measured (no threshold)")
    assert "| \U0001f4cf measured (no threshold) |" in text


def test_baseline_note_is_shown_and_escaped(records: list[GateRecord]) -> None:
    records[0].baseline_note = "baseline re-recorded: 35.5 -> 36.1\x1b[2J"
    assert GateRecord.from_dict(json.loads(json.dumps(records[0].to_dict()))) == records[0]
    lines = [text for text, _ in report.summary_lines(records, markup=False)]
    assert "ftgate: MedMCQA: baseline re-recorded: 35.5 -> 36.1\\x1b[2J" in lines
    text = report.to_markdown(records)
    assert "- MedMCQA: baseline re-recorded: 35.5 -&gt; 36.1\\\\x1b\\[2J" in text
    assert ("ftgate_baseline", "baseline re-recorded: 35.5 -> 36.1\\x1b[2J") in report.junit_properties(records[0])


def test_text_from_data_is_escaped_in_every_renderer() -> None:
    evil = record(
        "fpb",
        title="<b>x</b>\nforged\u202e",
        texts={0: ("q\x1b[2J", "A", "A\x9b", "B\x07")},
    )
    lines = "\n".join(text for text, _ in report.summary_lines([evil], markup=False))
    assert "\x1b" not in lines and "\u202e" not in lines and "\nforged" not in lines
    assert "ftgate: <b>x</b>\\nforged\\u202e regressed" in lines
    text = report.to_markdown([evil])
    assert text.splitlines()[0] == "### \u274c ftgate: &lt;b&gt;x&lt;/b&gt;\\\\nforged\\\\u202e regressed"
    assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) <= 0x9F for c in text)
    assert "q\\\\x1b\\[2J" in text
    assert report.to_json([evil])["gates"][0]["top_lost"][0]["text"] == "q\x1b[2J"  # raw: JSON escapes it
