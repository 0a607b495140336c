"""The forgetting curve in every output (terminal, Markdown, PNG, JSON, JUnit), on records alone."""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate import reporting
from pytest_ftgate.curve import Curve
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.reporting import GateRecord
from pytest_ftgate.reporting.curve import overview
from pytest_ftgate.reporting.summary import signed

MakeCurve = Callable[..., Curve]
MakeRecord = Callable[..., GateRecord]


@pytest.fixture
def curved(make_record: MakeRecord, make_curve: MakeCurve) -> list[GateRecord]:
    """FPB forgets from step 20 (step 15 fails without proof); MedMCQA stays put."""
    fpb = make_record("fpb", title="FPB", nodeid="t.py::test_gate[fpb]")
    fpb.curve = make_curve("fpb", title="FPB", losses=(0, 2, 8, 20, 40))
    med = make_record("medmcqa", title="MedMCQA", lost=2, gained=30, both=60, nodeid="t.py::test_gate[medmcqa]")
    med.curve = make_curve("medmcqa", title="MedMCQA", losses=(1, 0, 2, 1, 0), gained=3)
    return [fpb, med]


def _text(records: list[GateRecord]) -> list[str]:
    return [text for text, _ in reporting.summary_lines(records, markup=False)]


def _sentence(curve: Curve) -> str:
    point = curve.first_proven_drop()
    assert point is not None
    low, high = point.ci
    interval = f"[{signed(low)}, {signed(high)}]"
    return f"forgetting proven from step {point.step}: {curve.title} {signed(point.delta)} points {interval} beyond -2.0"


def test_terminal_table_per_curve_and_the_first_proven_drop(curved: list[GateRecord]) -> None:
    lines = _text(curved)
    start = lines.index("forgetting curve: FPB (base 70.0, max drop 2.0, 5 checkpoints)")
    assert lines[start + 1].split() == ["step", "score", "delta", "95%", "CI", "verdict"]
    rows = [line.split() for line in lines[start + 2 : start + 7]]
    curve = curved[0].curve
    assert curve is not None
    for row, point in zip(rows, curve.points, strict=True):
        assert row[:3] == [str(point.step), f"{point.tuned:.1f}", signed(point.delta)]
        assert " ".join(row[3:5]) == f"[{signed(point.ci[0])}, {signed(point.ci[1])}]"
    assert [" ".join(row[5:]) for row in rows] == ["pass", "pass", "fail", "fail (drop proven)", "fail (drop proven)"]
    assert lines[start + 7] == "ftgate: " + _sentence(curve)
    assert _sentence(curve).startswith("forgetting proven from step 20: FPB -9.0 points [")
    assert "ftgate: MedMCQA: no drop beyond -2.0 proven at any of 5 checkpoints" in lines


def test_terminal_markup_marks_proven_drops_red(curved: list[GateRecord]) -> None:
    lines = reporting.summary_lines(curved, markup=True)
    texts = [text for text, _ in lines]
    start = texts.index("forgetting curve: FPB (base 70.0, max drop 2.0, 5 checkpoints)")
    marks = [kw for _, kw in lines[start + 2 : start + 8]]
    assert marks[0] == {"green": True} and marks[2] == {"red": True, "bold": True}
    assert marks[5] == {"red": True, "bold": True}  # the sentence naming the step
    assert lines[texts.index("ftgate: MedMCQA: no drop beyond -2.0 proven at any of 5 checkpoints")][1] == {}


def test_overview_benchmark_by_step(
    curved: list[GateRecord], make_record: MakeRecord, make_curve: MakeCurve
) -> None:
    lines = _text(curved)
    head = lines.index("forgetting curves: delta by step (points; * drop proven beyond the max_drop)")
    assert lines[head + 1].split() == ["benchmark", "5", "10", "15", "20", "25"]
    fpb = lines[head + 2].split()
    assert fpb[0] == "FPB" and fpb[3] == "-3.0" and fpb[4].endswith("*") and fpb[5].endswith("*")
    assert not any(cell.endswith("*") for cell in lines[head + 3].split())
    # steps in numeric order, a benchmark without a step left blank; a checkpoint named "10" is not step 10
    a = make_record("fpb", title="FPB", nodeid="t.py::a")
    a.curve = make_curve("fpb", losses=(0, 2, 8), steps=(5, 20, 100))
    b = make_record("medmcqa", title="MedMCQA", nodeid="t.py::b")
    b.curve = make_curve(
        "medmcqa", title="MedMCQA", losses=(0, 1), steps=(20, None), adapters=("m/checkpoint-20", "10")
    )
    table = overview([a, b])
    assert table is not None
    assert table.columns == ["5", "20", "100", "10"]
    assert table.rows[1][1][0] == "" and table.rows[1][1][2] == "" and table.rows[1][1][3] != ""


def test_one_benchmark_has_no_overview_and_no_curve_changes_nothing(
    curved: list[GateRecord], records: list[GateRecord]
) -> None:
    assert overview(curved[:1]) is None
    assert not any(line.startswith("forgetting curves:") for line in _text(curved[:1]))
    plain = _text(records)
    assert not any("forgetting" in line.lower() and "curve" in line.lower() for line in plain)
    assert "Forgetting curve" not in reporting.to_markdown(records)
    assert all("curve" not in gate for gate in reporting.to_json(records)["gates"])
    assert not any(name.startswith("ftgate_curve") for r in records for name, _ in reporting.junit_properties(r))
    # the curve section is added after the existing summary, which stays as it was
    fpb, _ = curved
    bare = GateRecord.from_dict({k: v for k, v in fpb.to_dict().items() if k != "curve"})
    assert _text(curved[:1])[: len(_text([bare]))] == _text([bare])


def test_measured_points_no_threshold_and_a_differing_base(make_record: MakeRecord, make_curve: MakeCurve) -> None:
    record = make_record("fpb", title="FPB", max_drop=None)
    record.curve = make_curve(max_drop=None, losses=(0, 40))
    lines = _text([record])
    assert "forgetting curve: FPB (base 70.0, no threshold: measured, 2 checkpoints)" in lines
    assert "ftgate: FPB: no max_drop, so no drop to prove (the curve is measured)" in lines
    assert sum(line.rstrip().endswith("measured") and line.split()[0] in ("5", "10") for line in lines) == 2
    varied = make_record("fpb", title="FPB")
    curve = make_curve(losses=(0, 2))
    other = make_curve(losses=(0, 2), base_right=150)
    varied.curve = Curve("fpb", "FPB", "generate", 2.0, None, False, [curve.points[0], other.points[1]])
    lines = _text([varied])
    start = next(i for i, line in enumerate(lines) if line.startswith("forgetting curve: FPB (max drop"))
    assert lines[start + 1].split()[:3] == ["step", "base", "score"]
    assert lines[start + 3].split()[1] == "75.0"


def test_text_from_data_is_escaped(make_record: MakeRecord, make_curve: MakeCurve, tmp_path: Path) -> None:
    evil = "F\x1b[2JPB|x"
    record = make_record("fpb", title=evil)
    path = "runs/\x1b]8;;\u202eevil|`x"
    record.curve = make_curve(title=evil, losses=(0, 40), steps=(5, None), adapters=("ok", path))
    other = make_record("medmcqa", title="M\u2066ed")
    other.curve = make_curve("medmcqa", title="M\u2066ed", losses=(0, 1))
    terminal = "\n".join(_text([record, other]))
    assert "\x1b" not in terminal and "\u202e" not in terminal and "\u2066" not in terminal
    assert "forgetting proven from checkpoint runs/\\x1b]8;;\\u202eevil|`x: F\\x1b[2JPB|x" in terminal
    markdown = reporting.to_markdown([record, other])
    assert "\x1b" not in markdown and "\u202e" not in markdown
    row = next(line for line in markdown.splitlines() if "evil" in line and line.startswith("| "))
    assert row.count(" | ") == 5 and "evil\\|" in row  # six cells: the pipe in the path is escaped
    pytest.importorskip("matplotlib")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a control character reaching the chart warns of a missing glyph
        assert reporting.write_plot(tmp_path / "evil.png", [record, other]).read_bytes()[:4] == b"\x89PNG"


def test_markdown_curve_table(curved: list[GateRecord]) -> None:
    text = reporting.to_markdown(curved)
    lines = text.splitlines()
    start = lines.index("**Forgetting curve: FPB** (base 70.0, max drop 2.0, 5 checkpoints)")
    assert lines[start + 2] == "| Step | Checkpoint | Score | \u0394 | 95% CI | Verdict |"
    rows = lines[start + 4 : start + 9]
    assert rows[0].startswith("| 5 | runs/r1/checkpoint-5 | ")
    assert "| **-9.0** |" in rows[3] and "fail (drop proven)" in rows[3]
    assert "| -3.0 |" in rows[2]  # failed, not proven: not bold
    curve = curved[0].curve
    assert curve is not None
    assert lines[start + 10] == _sentence(curve).replace("[", "\\[").replace("]", "\\]")
    assert "| Benchmark | 5 | 10 | 15 | 20 | 25 |" in lines
    assert lines.index("**Decision framework** (seed study: the baseline decides how hard to fine-tune)") < start


def test_json_report_carries_the_curve(curved: list[GateRecord]) -> None:
    gates = reporting.to_json(curved)["gates"]
    fpb = gates[0]["curve"]
    assert fpb["first_proven_drop"] == {"step": 20, "adapter": "runs/r1/checkpoint-20"}
    assert [p["step"] for p in fpb["points"]] == [5, 10, 15, 20, 25]
    assert [p["verdict"]["outcome"] for p in fpb["points"]] == ["pass", "pass", "fail", "fail", "fail"]
    assert gates[1]["curve"]["first_proven_drop"] is None


def test_junit_properties_name_the_first_proven_drop(curved: list[GateRecord], errored: Callable[..., Any]) -> None:
    props = dict(reporting.junit_properties(curved[0]))
    assert (props["ftgate_curve_points"], props["ftgate_forgetting_from"]) == ("5", "20")
    assert dict(reporting.junit_properties(curved[1]))["ftgate_forgetting_from"] == "none"
    failed = errored()
    failed.curve = curved[0].curve
    assert dict(reporting.junit_properties(failed))["ftgate_forgetting_from"] == "20"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_plot_adds_the_curves_under_the_bars(curved: list[GateRecord], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    bare = [GateRecord.from_dict({k: v for k, v in r.to_dict().items() if k != "curve"}) for r in curved]
    bars = _png_size(reporting.write_plot(tmp_path / "bars.png", bare))
    both = _png_size(reporting.write_plot(tmp_path / "both.png", curved))
    alone = _png_size(reporting.write_curve_plot(tmp_path / "curve.png", curved))
    assert both[1] == bars[1] + alone[1]  # the curve figure stacked under the unchanged bar chart
    assert both[0] == max(bars[0], alone[0]) and alone[0] > alone[1]  # two panels side by side
    assert not list(tmp_path.glob("*.tmp"))


def test_curve_plot_without_steps_and_without_curves(
    make_record: MakeRecord, make_curve: MakeCurve, records: list[GateRecord], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    record = make_record("fpb", title="FPB $x$")
    record.curve = make_curve(losses=(0, 8, 40), steps=(None, None, None), adapters=("a", "b", "c$"))
    assert _png_size(reporting.write_curve_plot(tmp_path / "c.png", [record]))[0] > 0
    with pytest.raises(ConfigError, match="no forgetting curve to plot"):
        reporting.write_curve_plot(tmp_path / "none.png", records)
    assert not (tmp_path / "none.png").exists()


def test_curve_plot_without_matplotlib_says_how_to_install(
    curved: list[GateRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"pip install 'pytest-ftgate\[plot\]'"):
        reporting.write_curve_plot(tmp_path / "x.png", curved)


def test_the_seed_study_shows_the_curve_without_matplotlib(
    curved: list[GateRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """README command 1 installs ``.[torch]``, which has no matplotlib: the study prints the curve
    tables and says why there is no chart instead of failing at the end of a four-minute run."""
    import importlib.util

    from pytest_ftgate import seed_study

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    seed_study.show_curve(curved, {}, tmp_path / "curve.png")
    out = capsys.readouterr()
    assert "forgetting curve: FPB" in out.out
    assert "curve chart skipped: matplotlib is not installed" in out.out + out.err
    assert not (tmp_path / "curve.png").exists()
