"""reporting.record and reporting.summary: the record, its JSON round trip, the JSON report, the
overall outcome, the headline and the decision framework. Records only, no model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ftgate import reporting
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.reporting import GateRecord
from pytest_ftgate.reporting.record import OUTPUT_WIDTH, TEXT_WIDTH, TOP_LOST
from pytest_ftgate.results import EarlyStop, EvalResult, Flip, ModelInfo, Prediction, compare

MakeRecord = Callable[..., GateRecord]


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
    assert len(fpb.top_lost) == TOP_LOST
    assert fpb.top_lost[0].text.startswith("Sales | rose\n12%")
    assert fpb.top_lost[0].tuned_output == "neutral **really**"
    assert fpb.seconds == pytest.approx(42.75)
    assert fpb.base_model == "gemma-4-e4b-it-4bit" and fpb.tuned_fingerprint == "t" * 64
    assert set(fpb.base_metrics) == {"accuracy", "unparsed_rate"}
    assert fpb.mode == "generate"


def test_record_clips_long_texts(make_record: MakeRecord) -> None:
    long = "word " * 400
    rec = make_record(texts={0: (long, "positive", long, long)})
    assert len(rec.top_lost[0].text) <= TEXT_WIDTH
    assert len(rec.top_lost[0].tuned_output) <= OUTPUT_WIDTH
    assert rec.top_lost[0].text.endswith("\u2026")


def test_record_round_trip_through_json(records: list[GateRecord]) -> None:
    for rec in records:
        rec.test_outcome = "failed" if rec.outcome == "fail" else "passed"
        data = json.loads(json.dumps(rec.to_dict()))  # what xdist's workeroutput carries
        assert GateRecord.from_dict(data) == rec


def test_collate_dedupes_and_sorts(records: list[GateRecord]) -> None:
    again = GateRecord.from_dict(records[0].to_dict())
    again.outcome = "fail"
    merged = reporting.collate([records[2], records[0], records[1], again])
    assert [r.nodeid for r in merged] == sorted(r.nodeid for r in records)
    assert merged[1].outcome == "fail"  # the later record of a node id wins


def test_json_schema_fields(records: list[GateRecord], tmp_path: Path) -> None:
    meta = reporting.make_meta(
        started=0.0,
        backend="mlx",
        base="mlx-community/gemma-4-e4b-it-4bit",
        adapter="adapters/run7",
        confidence=0.95,
        limit=500,
        mode="generate",
        strict=False,
    )
    path = reporting.write_json(tmp_path / "out" / "ftgate.json", records, meta=meta)
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
        "early_stop",  # null unless the run stopped early (issue 13)
        "drift",  # null unless logprob mode measured it (issue 13)
        "notes",  # what the gate said computing it (issue 13)
        "advice",
    }
    assert set(gate["base"]) == {"score", "model", "fingerprint", "metrics", "seconds"}
    assert gate["thresholds"] == {"max_drop": 2.0, "min_gain": None, "strict": False}
    assert gate["verdict"]["outcome"] == "fail"
    assert gate["advice"]["framework"] == reporting.advice(records[1].base)
    assert gate["advice"]["measured"].startswith("regressed")
    assert set(gate["top_lost"][0]) == {
        "id",
        "text",
        "gold",
        "base_output",
        "tuned_output",
        "base_answer",  # the parsed answers (issue 13: one Flip type)
        "tuned_answer",
    }
    assert (gate["early_stop"], gate["drift"], gate["notes"]) == (None, None, [])
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temporary file
    meta_back, back = reporting.load_json(path)
    assert back == records and meta_back == meta


def test_report_files_get_the_usual_permissions(records: list[GateRecord], tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = (reporting.write_json(tmp_path / "r.json", records), reporting.write_markdown(tmp_path / "r.md", records))
    for path in written:
        assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_load_json_rejects_other_versions(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema": reporting.SCHEMA, "version": 99, "gates": []}))
    with pytest.raises(ConfigError, match="version 99"):
        reporting.load_json(path)
    path.write_text("{}")
    with pytest.raises(ConfigError, match="not an ftgate report"):
        reporting.load_json(path)


def test_undefined_metric_is_null_in_json(records: list[GateRecord], tmp_path: Path) -> None:
    records[0].tuned_metrics["macro_f1"] = float("nan")
    path = reporting.write_json(tmp_path / "r.json", records)
    assert json.loads(path.read_text())["gates"][0]["tuned"]["metrics"]["macro_f1"] is None


def test_empty_run_json() -> None:
    data = reporting.to_json([], meta={"base": "x"})
    assert data["summary"]["outcome"] == "pass" and data["gates"] == []


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
    assert words in reporting.advice(score)


def test_outcome_note(records: list[GateRecord], make_record: MakeRecord) -> None:
    med, fpb, _ = records
    assert reporting.outcome_note(med) == f"improved +{med.delta:.1f}"
    assert reporting.outcome_note(fpb) == f"regressed {fpb.delta:.1f} (forgetting)"
    flat = make_record(n=100, lost=2, gained=1, both=50)
    assert reporting.outcome_note(flat).startswith("no clear change (-1.0, interval ")


def test_headline_wording(records: list[GateRecord], make_record: MakeRecord) -> None:
    assert reporting.headline(records) == "1 of 3 benchmarks regressed (FPB)"
    assert reporting.headline([records[0], records[2]]) == "all 2 benchmarks passed"
    assert reporting.headline([records[0]]) == "MedMCQA passed"
    short = make_record("medmcqa", title="MedMCQA", n=100, lost=0, gained=1, both=40, max_drop=None, min_gain=5.0)
    assert reporting.headline([short]) == "MedMCQA failed"
    assert reporting.headline([records[1]]) == "FPB regressed"
    unsure = make_record("sentiment", title="Sentiment", n=100, lost=3, gained=1, both=60, max_drop=2.0, strict=True)
    assert reporting.headline([unsure]) == "Sentiment inconclusive"
    assert reporting.headline([records[0], unsure]) == "1 of 2 benchmarks inconclusive"
    assert reporting.headline([records[1], unsure]) == "1 of 2 benchmarks regressed (FPB), 1 inconclusive"
    assert reporting.headline([]) == "no gates ran"


def test_report_module_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, pytest_ftgate.reporting; print('matplotlib' in sys.modules, 'pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "False"


def test_error_record_travels_through_json_with_null_numbers(errored: Callable[..., GateRecord]) -> None:
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


def test_error_outranks_every_other_outcome(records: list[GateRecord], errored: Callable[..., GateRecord]) -> None:
    assert reporting.overall_outcome([*records, errored()]) == "error"
    assert reporting.headline([errored()]) == "FPB errored"
    # two gates on FPB: the headline names the tests, not the title they share (issue 14)
    headline = reporting.headline([*records, errored("x.py::t")])
    assert headline == "1 of 4 gates errored (t), 1 regressed (test_gate[fpb])"
    data = reporting.to_json([records[0], errored()])
    assert data["summary"]["outcome"] == "error" and data["summary"]["errors"] == 1


def test_measurement_is_not_a_pass(make_record: MakeRecord) -> None:
    measured = make_record("fpb", title="FPB", n=100, lost=33, gained=0, both=60, max_drop=None)
    assert measured.outcome == "measured"
    assert reporting.overall_outcome([measured]) == "measured"
    assert reporting.headline([measured]) == "FPB measured (no threshold)"
    gate = make_record("medmcqa", title="MedMCQA", n=100, lost=0, gained=0, both=60)
    assert reporting.overall_outcome([measured, gate]) == "pass"  # the one gate passed
    assert reporting.headline([measured, gate]) == "1 of 2 benchmarks passed, 1 measured (no threshold)"
    text = reporting.to_markdown([measured])
    assert text.startswith("### \U0001f4cf ftgate: FPB measured (no threshold)")
    assert "| \U0001f4cf measured (no threshold) |" in text


# --- one record carries everything (issue 13) -------------------------------------------------


def _logprob_pair(n: int = 6) -> tuple[EvalResult, EvalResult]:
    """logprob-mode results: tuned loses the first example and moves every gold log-probability."""
    base, tuned = [], []
    for i in range(n):
        gold = "positive"
        lp = {"positive": -0.1, "negative": -2.5}
        moved = {"positive": -1.5 if i == 0 else -0.3, "negative": -0.4 if i == 0 else -1.9}
        base.append(Prediction(f"e{i}", "positive", "positive", gold, True, f"q{i}", lp))
        answer = "negative" if i == 0 else "positive"
        tuned.append(Prediction(f"e{i}", answer, answer, gold, i != 0, f"q{i}", moved))

    def result(model: ModelInfo, preds: list[Prediction]) -> EvalResult:
        acc = 100.0 * sum(p.correct for p in preds) / n
        return EvalResult("fpb", model, n, acc, {"accuracy": acc}, preds, 1.0, title="FPB", mode="logprob")

    return result(ModelInfo("b", "b" * 64), base), result(ModelInfo("t", "t" * 64), tuned)


def test_record_carries_early_stop_drift_and_notes_through_json(make_record: MakeRecord) -> None:
    """Before: the record had no early stop, drift or notes, so JSON and xdist workers dropped them."""
    comparison = compare(*_logprob_pair())
    comparison.early = EarlyStop(50, 970, "pass", (-1.5, 3.0), 2.0, None, False)
    comparison.notes += ["FPB: generate mode (the fake backend has no log-probabilities)"] * 2
    rec = make_record(comparison=comparison, max_drop=2.0)
    assert rec.early == comparison.early
    assert rec.drift is not None and rec.drift["kl"] > 0 and rec.drift["n"] == 6.0
    assert rec.notes == ["FPB: generate mode (the fake backend has no log-probabilities)"]  # once
    data = json.loads(json.dumps(rec.to_dict(), allow_nan=False))  # what xdist's workeroutput carries
    assert data["early_stop"] == {
        "used": 50,
        "total": 970,
        "outcome": "pass",
        "interval": [-1.5, 3.0],
        "max_drop": 2.0,
        "min_gain": None,
        "strict": False,
    }
    assert set(data["drift"]) == {"gold_logprob_delta", "kl", "n"}
    assert data["notes"] == rec.notes
    assert GateRecord.from_dict(data) == rec


def test_lost_examples_are_flips_with_their_parsed_answers(make_record: MakeRecord) -> None:
    """Before: report.LostExample copied results.Flip without the parsed answers."""
    comparison = compare(*_logprob_pair())
    rec = make_record(comparison=comparison)
    assert rec.top_lost == [Flip("e0", "q0", "positive", "positive", "negative", "positive", "negative")]
    assert Flip.from_dict(json.loads(json.dumps(rec.top_lost[0].to_dict()))) == rec.top_lost[0]
    assert not hasattr(reporting, "LostExample")


def test_a_report_of_version_1_without_the_new_fields_still_reads(records: list[GateRecord]) -> None:
    data = records[1].to_dict()
    for key in ("early_stop", "drift", "notes"):
        del data[key]
    for example in data["top_lost"]:
        del example["base_answer"], example["tuned_answer"]
    back = GateRecord.from_dict(data)
    assert (back.early, back.drift, back.notes) == (None, None, [])
    assert back.top_lost[0].base_answer is None and back.top_lost[0].text == records[1].top_lost[0].text


def test_headline_names_the_tests_when_a_benchmark_has_several(make_record: MakeRecord) -> None:
    """Issue 14: "4 of 6 gates failed (FPB, FPB, MedMCQA, FPB)" did not say which FPB."""
    fpb = [make_record("fpb", title="FPB", nodeid=f"tests/test_{name}.py::test_{name}[fpb]") for name in "abc"]
    med = make_record("medmcqa", title="MedMCQA", nodeid="tests/test_med.py::test_med")
    ok = make_record("medmcqa", title="MedMCQA", n=100, lost=0, gained=0, both=50, nodeid="tests/test_x.py::test_x")
    assert reporting.headline([*fpb, med, ok]) == (
        "4 of 5 gates regressed (test_a[fpb], test_b[fpb], test_c[fpb], test_med)"
    )
    same = [make_record("fpb", title="FPB", nodeid=f"tests/{d}/test_g.py::test_g[fpb]") for d in "xy"]
    assert reporting.headline(same) == (
        "2 of 2 gates regressed (tests/x/test_g.py::test_g[fpb], tests/y/test_g.py::test_g[fpb])"
    )
    evil = make_record("fpb", title="FPB", nodeid="t.py::test_g[\x1b[2J]")
    assert "\x1b" not in reporting.headline([evil, *fpb])
