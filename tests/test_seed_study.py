"""The seed study in miniature, at a reduced size (steps, examples) so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("gguf")


def test_seed_study_trains_gates_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_ftgate import embedded, seed_study

    try:
        embedded.find_default_gguf()
    except Exception as exc:  # the package is installed with --no-deps; CI does, a bare machine may not
        pytest.skip(f"embedded model not installed: {exc}")
    code = seed_study.main(["--dir", str(tmp_path), "--steps", "3", "--limit", "6"])
    out = capsys.readouterr().out
    assert code in (0, 1)  # 1: no benchmark improved after 3 steps, which the table then shows
    reports = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("report-*.json")}
    assert set(reports) == {"report-sentiment", "report-arithmetic"}
    for report in reports.values():
        assert {g["benchmark"] for g in report["gates"]} == {"finsent-probe", "arith-probe"}
        assert all(g["n"] == 6 for g in report["gates"])
    assert "adapter     benchmark" in out and "advice" in out
    for name in ("sentiment", "arithmetic"):
        assert (tmp_path / "adapters" / name / "adapter_model.safetensors").is_file()
