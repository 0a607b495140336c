"""pytest_ftgate.curve: the forgetting curve's values, its first proven drop, and its trip through
plain data (xdist workers, the JSON report) with every impossible curve refused."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate import reporting
from pytest_ftgate.curve import Curve, CurvePoint, PointNumbers
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.reporting import GateRecord
from pytest_ftgate.results import Verdict

MakeCurve = Callable[..., Curve]
MakeRecord = Callable[..., GateRecord]


def _numbers(delta: float = -3.0, ci: tuple[float, float] = (-5.0, -1.0), base: float = 80.0) -> PointNumbers:
    return PointNumbers(base, base + delta, delta, ci, 0.95, 0.01, 200, 10, 4)


def _point(step: int | None, ci_high: float, adapter: str | None = None) -> CurvePoint:
    numbers = _numbers(ci=(ci_high - 4.0, ci_high))
    return CurvePoint(step, adapter or f"ckpt-{step}", None, Verdict("fail", "x"), numbers)


def test_first_proven_drop_is_the_first_interval_beyond_the_margin(make_curve: MakeCurve) -> None:
    curve = make_curve(losses=(0, 2, 8, 20, 40))
    outcomes = [point.outcome for point in curve.points]
    assert outcomes == ["pass", "pass", "fail", "fail", "fail"]
    # step 15 fails (its delta is beyond the margin) but its interval reaches above -2: not proven
    assert curve.points[2].ci[1] > -2.0
    first = curve.first_proven_drop()
    assert first is curve.points[3] and first.step == 20 and first.ci[1] < -2.0


def test_first_proven_drop_needs_a_strict_inequality_and_a_max_drop() -> None:
    on_the_line = Curve("fpb", "FPB", "generate", 2.0, None, False, [_point(5, -2.0), _point(10, -2.01)])
    assert on_the_line.first_proven_drop() is on_the_line.points[1]
    unmeasured = Curve("fpb", "FPB", "generate", None, 1.0, False, [_point(5, -30.0)])
    assert unmeasured.first_proven_drop() is None  # no max_drop: nothing to prove
    harmless = Curve("fpb", "FPB", "generate", 2.0, None, False, [_point(5, 0.5), _point(10, -1.9)])
    assert harmless.first_proven_drop() is None


def test_points_read_their_numbers_from_the_comparison(make_comparison: Callable[..., Any]) -> None:
    comparison = make_comparison("fpb", n=200, lost=30, gained=5, both=100)
    point = CurvePoint(40, "out/checkpoint-40", comparison, None)
    assert (point.base, point.tuned, point.delta) == (comparison.base.score, comparison.tuned.score, comparison.delta)
    assert (point.ci, point.n, point.lost, point.gained) == (comparison.ci, 200, 30, 5)
    assert point.outcome is None and point.label == "step 40"
    with pytest.raises(ConfigError, match="neither a comparison nor its numbers"):
        CurvePoint(1, "x", None, None)


def test_curve_round_trips_through_json(make_curve: MakeCurve) -> None:
    curve = make_curve(losses=(0, 8, 40), steps=(10, 20, None), adapters=("a/checkpoint-10", "a/checkpoint-20", "a"))
    data = json.loads(json.dumps(curve.to_dict(), allow_nan=False))
    assert data["first_proven_drop"] == {"step": None, "adapter": "a"}
    assert data["thresholds"] == {"max_drop": 2.0, "min_gain": None, "strict": False}
    assert set(data["points"][0]) == {
        "step", "adapter", "base", "tuned", "delta", "ci", "confidence", "p_value", "n", "lost", "gained", "verdict",
    }  # fmt: skip
    back = Curve.from_dict(data)
    assert back.to_dict() == curve.to_dict()
    assert all(point.comparison is None for point in back.points)  # numbers only, no predictions
    assert [p.verdict for p in back.points] == [p.verdict for p in curve.points]


def test_record_with_a_curve_round_trips(make_record: MakeRecord, make_curve: MakeCurve, tmp_path: Path) -> None:
    record = make_record("fpb", title="FPB")
    plain = make_record("medmcqa", title="MedMCQA")
    assert "curve" not in plain.to_dict()  # reports of one adapter keep their fields
    record.curve = make_curve()
    data = record.to_dict()
    assert data["curve"]["first_proven_drop"] == {"step": 20, "adapter": "runs/r1/checkpoint-20"}
    back = GateRecord.from_dict(json.loads(json.dumps(data, allow_nan=False)))
    assert back.curve is not None and back.curve.to_dict() == record.curve.to_dict()
    assert back.to_dict() == data
    path = reporting.write_json(tmp_path / "r.json", [record, plain])
    _, loaded = reporting.load_json(path)
    assert loaded[0].curve is not None and loaded[0].curve.first_proven_drop().step == 20
    assert loaded[1].curve is None


# --- refused -----------------------------------------------------------------------------------


def _forge(curve: Curve, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = copy.deepcopy(curve.to_dict())
    edit(data)
    return data


def _set(point: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["points"][point][key] = value

    return edit


def _steps(*steps: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for point, step in zip(data["points"], steps, strict=True):
            point["step"] = step

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set(1, "delta", math.nan), "point 1: nan is not a finite number"),
        (_set(1, "delta", None), "point 1: None is not a finite number"),
        (_set(1, "ci", [math.nan, 1.0]), "point 1: nan is not a finite number"),
        (_set(1, "ci", [math.inf, math.inf]), "not a finite number"),
        (_set(1, "tuned", "70"), "'70' is not a finite number"),
        (_set(1, "tuned", True), "True is not a finite number"),
        (_set(2, "delta", 5.0), r"point 2 .*delta 5.0 is not tuned - base"),  # a drop shown as a gain
        (_set(2, "ci", [3.0, -3.0]), r"point 2 .*is not an interval"),
        (_set(0, "tuned", 130.0), "outside 0-100"),
        (_set(0, "lost", 500), r"lost \+ gained .* exceeds n"),
        (_set(0, "n", 2.5), "not an integer count"),
        (_set(0, "confidence", 1.5), "confidence 1.5 is not between 0 and 1"),
        (_set(0, "verdict", {"outcome": "passed", "reason": ""}), "'passed' is not one of"),
        (_set(0, "verdict", {"outcome": "error", "reason": ""}), "'error' is not one of"),
        (_set(0, "step", "5"), "step '5' is not an integer"),
        (_set(0, "step", True), "step True is not an integer"),
        (_set(0, "step", -5), "not a non-negative integer"),
        (_set(1, "adapter", None), "adapter None is not a string"),
        (_steps(100, 20, 30, 40, 50), "step 20 follows step 100"),  # string order: "100" < "20"
        (_steps(5, 10, 10, 20, 25), "step 10 follows step 10"),
        (_steps(5, None, 15, 20, 25), "a point with a step follows one without"),
        (_set(3, "adapter", "runs/r1/checkpoint-5"), "the same checkpoint appears twice"),
        (lambda d: d["points"][1].pop("ci"), "point 1: missing key 'ci'"),
        (lambda d: d.update(points=[]), "has no points"),
        (lambda d: d.update(points="none"), "points is not a list"),
        (lambda d: d["thresholds"].update(max_drop=math.nan), "not a finite number"),
        (lambda d: d["thresholds"].update(strict="yes"), "strict 'yes' is not true or false"),
    ],
)
def test_impossible_curves_are_refused(
    make_curve: MakeCurve, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = _forge(make_curve(), edit)
    with pytest.raises(ConfigError, match=message) as caught:
        Curve.from_dict(data)
    assert "fpb" in str(caught.value)


def test_nan_written_by_a_hand_edited_report_is_refused(
    make_record: MakeRecord, make_curve: MakeCurve, tmp_path: Path
) -> None:
    record = make_record("fpb")
    record.curve = make_curve()
    data = reporting.to_json([record])
    data["gates"][0]["curve"]["points"][3]["ci"][1] = math.nan  # hides the proven drop at step 20
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(data))  # writes NaN, which json.loads reads back: the reader must refuse it
    assert "NaN" in path.read_text()
    with pytest.raises(ConfigError, match="forgetting curve"):
        reporting.load_json(path)


def test_a_curve_of_another_benchmark_is_refused(make_record: MakeRecord, make_curve: MakeCurve) -> None:
    record = make_record("fpb")
    record.curve = make_curve("medmcqa", title="MedMCQA")
    with pytest.raises(ConfigError, match="carries a curve of 'medmcqa'"):
        GateRecord.from_dict(record.to_dict())


def test_curves_built_in_memory_are_validated(make_curve: MakeCurve) -> None:
    with pytest.raises(ConfigError, match="step 20 follows step 100"):
        make_curve(losses=(0, 2), steps=(100, 20))
    assert [p.step for p in make_curve(losses=(0, 2, 8), steps=(5, 20, 100)).points] == [5, 20, 100]
    with pytest.raises(ConfigError, match="max_drop inf is not a finite number of points"):
        Curve("fpb", "FPB", "generate", math.inf, None, False, [_point(5, -3.0)])
    with pytest.raises(ConfigError, match="point 0 .*delta is nan, not a finite number"):
        Curve("fpb", "FPB", "generate", 2.0, None, False, [CurvePoint(1, "a", None, None, _numbers(delta=math.nan))])


def test_an_early_stopped_point_keeps_its_anytime_valid_interval(make_comparison: Callable[..., Any]) -> None:
    from pytest_ftgate.results import EarlyStop

    comparison = make_comparison("fpb", n=60, lost=12, gained=1, both=30)
    assert comparison.ci[1] < -2.0  # the fixed-sample interval alone would prove the drop
    comparison.early = EarlyStop(60, 970, "inconclusive", (-30.0, 1.5), 2.0, None, False)
    point = CurvePoint(10, "ckpt-10", comparison, comparison.verdict(max_drop=2.0))
    assert point.ci == (-30.0, 1.5)
    assert Curve("fpb", "FPB", "generate", 2.0, None, False, [point]).first_proven_drop() is None
