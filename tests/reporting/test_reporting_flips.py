"""reporting.flips: every lost and gained example as JSON Lines (issue 14), on comparisons alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_ftgate import reporting


def test_flip_rows_hold_every_lost_and_gained_example(make_comparison: Callable[..., Any]) -> None:
    comparison = make_comparison("fpb", n=20, lost=7, gained=2, both=5, texts={0: ("q\x1b", "A", "A", "B\n")})
    rows = reporting.flip_rows("t.py::test_fpb", comparison)
    assert [row["direction"] for row in rows] == ["lost"] * 7 + ["gained"] * 2  # all of them, not the top 5
    assert rows[0] == {
        "nodeid": "t.py::test_fpb",
        "benchmark": "fpb",
        "id": "fpb-0000",
        "direction": "lost",
        "gold": "A",
        "base_answer": "A",
        "tuned_answer": "B",
        "text": "q\x1b",  # raw: JSON escapes it
        "base_output": "A",
        "tuned_output": "B\n",
    }
    assert rows[7]["id"] == "fpb-0007" and (rows[7]["base_answer"], rows[7]["tuned_answer"]) == ("B", "A")


def test_write_flips_groups_by_test(make_comparison: Callable[..., Any], tmp_path: Path) -> None:
    a = reporting.flip_rows("t.py::test_b", make_comparison("fpb", n=10, lost=2, gained=1, both=3))
    b = reporting.flip_rows("t.py::test_a", make_comparison("medmcqa", n=10, lost=1, gained=0, both=3))
    path = reporting.write_flips(tmp_path / "out" / "flips.jsonl", [*a, *b])
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(r["nodeid"], r["direction"]) for r in rows] == [
        ("t.py::test_a", "lost"),
        ("t.py::test_b", "lost"),
        ("t.py::test_b", "lost"),
        ("t.py::test_b", "gained"),
    ]
    assert reporting.write_flips(tmp_path / "none.jsonl", []).read_text() == ""
