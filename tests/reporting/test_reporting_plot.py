"""reporting.plot: the PNG chart, on records alone."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ftgate import reporting
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.reporting import GateRecord

MakeRecord = Callable[..., GateRecord]


def test_plot_is_a_png(records: list[GateRecord], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = reporting.write_plot(tmp_path / "plots" / "ftgate.png", records)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert 800 <= width <= 2400 and 500 <= height <= 1200
    assert 10_000 < len(data) < 1_000_000
    assert not list(path.parent.glob("*.tmp"))


def test_plot_handles_one_and_repeated_benchmarks(tmp_path: Path, make_record: MakeRecord) -> None:
    pytest.importorskip("matplotlib")
    a = make_record(nodeid="t.py::a", max_drop=2.0)
    b = make_record(nodeid="t.py::b", max_drop=None, min_gain=1.0)
    assert reporting.write_plot(tmp_path / "one.png", [a]).read_bytes()[:4] == b"\x89PNG"
    assert reporting.write_plot(tmp_path / "two.png", [a, b]).read_bytes()[:4] == b"\x89PNG"
    assert reporting.write_plot(tmp_path / "none.png", []).read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_says_how_to_install(
    records: list[GateRecord], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'pytest-ftgate\[plot\]'"):
        reporting.write_plot(tmp_path / "x.png", records)
    assert not (tmp_path / "x.png").exists()
