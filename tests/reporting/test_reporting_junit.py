"""reporting.junit: JUnit XML properties, on records alone."""

from __future__ import annotations

import pytest

from pytest_ftgate import reporting
from pytest_ftgate.reporting import GateRecord


def test_junit_properties(records: list[GateRecord]) -> None:
    fpb = records[1]
    props = reporting.junit_properties(fpb)
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
