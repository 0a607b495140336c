"""reporting.markdown: the Markdown summary, on records alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_ftgate import reporting
from pytest_ftgate.reporting import GateRecord


def test_markdown_table_and_details(records: list[GateRecord]) -> None:
    meta = reporting.make_meta(base="mlx-community/gemma-4-e4b-it-4bit", adapter="adapters/run7", backend="mlx")
    text = reporting.to_markdown(records, meta=meta)
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
    text = reporting.to_markdown(records)
    row = next(line for line in text.splitlines() if "<sub>fpb-0000</sub>" in line)
    assert row.startswith("| Sales \\| rose<br>12% in Q3 &lt;b&gt;<br><sub>fpb-0000</sub> | positive |")
    assert "neutral \\*\\*really\\*\\*" in row
    assert row.count(" | ") == 3  # four cells: the pipe inside the text is escaped
    empty = next(line for line in text.splitlines() if "<sub>fpb-0001</sub>" in line)
    assert empty.endswith("| <i>(empty reply)</i> |")  # said so, not a blank cell


def test_markdown_all_passed_and_empty(records: list[GateRecord]) -> None:
    text = reporting.to_markdown([records[0]])
    assert text.startswith("### \u2705 ftgate: MedMCQA passed")
    assert "<details>" not in text
    assert reporting.to_markdown([]).startswith("### \u2705 ftgate: no gates ran")


def test_write_markdown_appends_to_step_summary(
    records: list[GateRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    reporting.write_markdown(summary, records)
    assert summary.read_text().startswith("earlier step\n### ")
    other = reporting.write_markdown(tmp_path / "x" / "ftgate.md", records)
    reporting.write_markdown(other, records)
    assert other.read_text().count("### ") == 1  # replaced, not appended
