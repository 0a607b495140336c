"""Red team: a stored baseline (syrupy snapshot) is a file a pull request can edit. Nothing in it
may change a verdict: its score, metrics and correctness are recomputed from its own answers and
the current gold answers, it is read before any model runs, and a consistent forgery is caught by
the audit that evaluates a random sample of its examples again with the base model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate import options
from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.errors import BaselineMismatch
from pytest_ftgate.gate import audit_allowance, audit_sample_size
from pytest_ftgate.results import EvalResult, ModelInfo, Prediction
from pytest_ftgate.snapshot import OUTPUT_CLIP, baseline_record, read_record, result_from_record

# The tuned model loses the first 12 of 40 examples: a real 30-point regression, which the gate fails.
GATE_TEST = """
import pytest

@pytest.mark.ftgate("sentiment", max_drop=2.0)
def test_gate(ftgate_comparison):
    print("NOTE", ftgate_comparison.baseline_note)

def test_calls():
    import conftest
    print("CALLS", conftest.CALLS["examples"])
"""
SNAPSHOT = "__snapshots__/test_gate/test_gate[sentiment].json"
SNAPSHOT_GLOB = SNAPSHOT.replace("[", "[[]")  # for fnmatch
FLIPS = 12
WRONG = {"positive": "negative", "negative": "positive", "neutral": "positive"}


@pytest.fixture
def run(gate_project: pytest.Pytester, fake_adapter: Any) -> Any:
    gate_project.makepyfile(test_gate=GATE_TEST)
    adapter = fake_adapter(fake_flips=FLIPS)

    def run(*extra: str) -> pytest.RunResult:
        # no prediction cache: every base answer the audit needs comes from the model itself
        return gate_project.runpytest(adapter, options.NO_CACHE, "-s", *extra)

    return run


@pytest.fixture
def recorded(run: Any, gate_project: pytest.Pytester) -> Path:
    """The honest baseline, recorded by a first run (which fails: the regression is real)."""
    first = run()
    first.assert_outcomes(passed=1, failed=1)
    first.stdout.fnmatch_lines(["*CALLS 80*", "*Sentiment dropped 30.0 points*"])
    path = gate_project.path / SNAPSHOT
    assert json.loads(path.read_text())["score"] == 100.0
    return path


def edit(path: Path, change: Any) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record, indent=2, sort_keys=True))


def forge_answers(record: dict[str, Any], ids: list[str]) -> None:
    """Turn stored base answers wrong, and everything that follows from them with them."""
    for i in ids:
        p = record["predictions"][i]
        p["parsed"] = p["output"] = WRONG[p["parsed"]]
        p["correct"] = False
    score = 100.0 * sum(p["correct"] for p in record["predictions"].values()) / record["n"]
    record["score"] = record["metrics"]["accuracy"] = round(score, 6)


def assert_refused(result: pytest.RunResult, *lines: str) -> None:
    """The gate errors with a message naming the file and the fix; no verdict is given."""
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(list(lines))
    assert any(SNAPSHOT in line and "pytest --snapshot-update" in line for line in result.outlines), result.outlines
    result.stdout.no_fnmatch_line("*Sentiment passed*")


def test_edited_score_is_refused(run: Any, recorded: Path) -> None:
    edit(recorded, lambda r: r.update(score=70.0))  # old code: "-0.0 points, passed"
    assert_refused(run(), "*contradicts its own answers*score 70.0 where its answers give 100.0*")


def test_edited_metric_is_refused(run: Any, recorded: Path) -> None:
    edit(recorded, lambda r: r["metrics"].update(unparsed_rate=5.0))
    assert_refused(run(), "*unparsed_rate 5.0 where its answers give 0.0*")


def test_flipped_correctness_is_refused(run: Any, recorded: Path) -> None:
    def flip(record: dict[str, Any]) -> None:
        for i in range(FLIPS):
            record["predictions"][f"s{i:03d}"]["correct"] = False

    edit(recorded, flip)  # old code: a report that contradicts itself
    assert_refused(run(), "*'s000' is stored as wrong, but its answer 'positive' is correct*and 9 more*")


def test_answer_that_its_output_does_not_give_is_refused(run: Any, recorded: Path) -> None:
    edit(recorded, lambda r: r["predictions"]["s001"].update(parsed="positive", correct=False))
    assert_refused(run(), "*'s001' stores the answer 'positive', but its output \"negative\" parses to 'negative'*")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "*is not valid JSON*"),
        ("[1, 2]", "*is not an ftgate baseline*"),
        ('{"ftgate_baseline": 1, "score": 100.0}', "*has record version 1; this pytest-ftgate reads version 2*"),
    ],
    ids=["invalid-json", "not-a-baseline", "old-version"],
)
def test_unreadable_snapshot_is_refused_before_any_model_runs(
    run: Any, recorded: Path, text: str, message: str
) -> None:
    recorded.write_text(text)  # old code: evaluated the base, then "could not be written or matched"
    result = run()
    assert_refused(result, message)
    result.stdout.fnmatch_lines(["*CALLS 0*"])  # neither the base nor the tuned model ran


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(score=float("nan")), "*score = NaN has the wrong type*"),
        (lambda r: r.update(n="40"), '*n = "40" has the wrong type*'),
        (lambda r: r["predictions"]["s002"].update(output=None), "*'s002' has output null*text expected*"),
        (lambda r: r["predictions"]["s002"].update(correct=1), "*'s002' has correct = 1*"),
        (lambda r: r["predictions"].pop("s039"), "*lists 39 examples (n = 40)*has 40: missing [[]'s039'], extra none*"),
        (lambda r: r["predictions"].update(extra=r["predictions"]["s000"]), "*extra [[]'extra']*"),
    ],
    ids=["nan-score", "string-n", "null-output", "int-correct", "missing-id", "extra-id"],
)
def test_wrong_types_and_example_sets_are_refused(run: Any, recorded: Path, change: Any, message: str) -> None:
    edit(recorded, change)
    result = run()
    assert_refused(result, message)
    result.stdout.fnmatch_lines(["*CALLS 0*"])


def test_consistent_forgery_fails_the_audit(run: Any, recorded: Path) -> None:
    """The stored answers of the 12 examples the tuned model loses are edited into wrong ones and
    the score recomputed: every check of the file's contents passes, only the base model can tell."""
    edit(recorded, lambda r: forge_answers(r, [f"s{i:03d}" for i in range(FLIPS)]))
    result = run(f"{options.AUDIT}=40")  # old code: "Sentiment did not change (70.0 -> 70.0)", pass
    assert_refused(
        result,
        "*stored baseline*does not hold the base model's answers: audited 40 of 40 examples with the "
        "base model (seed *), 12 answered differently (at most 1 allowed*'s000': stored 'negative', now 'positive'*",
    )


def test_consistent_forgery_fails_the_default_audit(run: Any, recorded: Path) -> None:
    """Every stored answer forged: whatever 8 examples the default audit draws, all 8 disagree."""
    edit(recorded, lambda r: forge_answers(r, list(r["predictions"])))
    result = run()
    assert_refused(result, "*does not hold the base model's answers: audited 8 of 40 examples*8 answered differently*")


def test_honest_baseline_passes_and_only_the_audit_sample_is_evaluated(run: Any, recorded: Path) -> None:
    result = run()
    result.assert_outcomes(passed=1, failed=1)  # the real regression, judged against the stored baseline
    result.stdout.fnmatch_lines(
        [
            f"NOTE stored baseline {SNAPSHOT_GLOB}: audited 8 of 40 examples with the base model (seed *), all agree",
            "*CALLS 48*",  # 40 tuned + the audit's 8 base examples
            "*Sentiment dropped 30.0 points*",
        ]
    )
    off = run(f"{options.AUDIT}=0")
    off.stdout.fnmatch_lines([f"NOTE stored baseline {SNAPSHOT_GLOB}: not audited ({options.AUDIT}=0)", "*CALLS 40*"])


def test_snapshot_update_rerecords_and_says_so(run: Any, recorded: Path) -> None:
    edit(recorded, lambda r: r.update(score=70.0))
    result = run("--snapshot-update")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"NOTE baseline re-recorded in {SNAPSHOT_GLOB} (--snapshot-update): 70.0 -> 100.0"])
    assert json.loads(recorded.read_text())["score"] == 100.0
    recorded.write_text("{not json")  # --snapshot-update is the fix for an unreadable one too
    run("--snapshot-update").stdout.fnmatch_lines(["NOTE baseline re-recorded in * unreadable -> 100.0"])


def test_first_run_says_recorded(run: Any) -> None:
    run().stdout.fnmatch_lines([f"NOTE baseline recorded in {SNAPSHOT_GLOB}: 100.0"])


def test_changed_gold_in_the_data_is_detected(run: Any, recorded: Path, gate_project: pytest.Pytester) -> None:
    data = gate_project.path / "sentiment.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[5]["a"] = WRONG[rows[5]["a"]]  # same id, same prompt: only the gold answer changed
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert_refused(run(), "*baseline was recorded for another set of examples (--ftgate-limit or the data changed)*")


def test_bad_audit_option_is_a_usage_error(gate_project: pytest.Pytester) -> None:
    gate_project.makepyfile(test_gate=GATE_TEST)
    result = gate_project.runpytest(f"{options.AUDIT}=-3")
    result.stderr.fnmatch_lines([f"*{options.AUDIT} must be auto, 0 (off) or a number of examples, got '-3'*"])


# -- the record itself, without a model ------------------------------------------------------


class Labels(Benchmark):
    name = "labels"
    title = "Labels"
    kind = "label"
    choices = ("positive", "negative", "neutral")


EXAMPLES = [Example("a", "p", "positive"), Example("b", "p", "negative")]


def record_for(outputs: list[str], logprobs: list[dict[str, float]] | None = None) -> dict[str, Any]:
    bench = Labels()
    predictions = [bench.prediction(e, out) for e, out in zip(EXAMPLES, outputs, strict=True)]
    if logprobs is not None:
        predictions = [Prediction(**{**p.__dict__, "logprobs": v}) for p, v in zip(predictions, logprobs, strict=True)]
    metrics = bench.metrics(predictions)
    mode = "generate" if logprobs is None else "logprob"
    result = EvalResult("labels", ModelInfo("m", "f"), 2, metrics["accuracy"], metrics, predictions, 0.0, mode=mode)
    return json.loads(json.dumps(baseline_record(result, {"examples": "x"}, bench)))


def test_output_is_kept_whole_only_where_the_clip_would_change_its_answer() -> None:
    late = "x" * OUTPUT_CLIP + " negative"  # the clip would leave no answer
    long = "positive " + "y" * OUTPUT_CLIP
    record = record_for([long, late])
    assert record["predictions"]["a"]["output"] == long[:OUTPUT_CLIP]
    assert record["predictions"]["b"]["output"] == late
    result = result_from_record(read_record(json.dumps(record), "f.json"), Labels(), EXAMPLES, "f.json")
    assert [p.parsed for p in result.predictions] == ["positive", "negative"] and result.score == 100.0


def test_logprob_answer_must_be_the_one_its_logprobs_choose() -> None:
    record = record_for(["positive", "negative"], [{"positive": -0.1, "negative": -3.0, "neutral": -4.0}] * 2)
    chooses = r"f.json.*'b' answers 'negative', but its stored log-probabilities choose 'positive'.*--snapshot-update"
    with pytest.raises(BaselineMismatch, match=chooses):
        result_from_record(read_record(json.dumps(record), "f.json"), Labels(), EXAMPLES, "f.json")
    record["predictions"]["a"]["logprobs"]["neutral"] = float("inf")
    with pytest.raises(BaselineMismatch, match=r"'a' has log-probabilities .*Infinity"):
        result_from_record(read_record(json.dumps(record), "f.json"), Labels(), EXAMPLES, "f.json")


def test_audit_size_and_allowance() -> None:
    assert [audit_sample_size("auto", n) for n in (5, 40, 970, 4183)] == [5, 8, 49, 100]
    assert audit_sample_size(0, 40) == 0 and audit_sample_size(500, 40) == 40
    assert [audit_allowance(k, False) for k in (8, 49, 100)] == [1, 1, 2]
    assert audit_allowance(100, True) == 0


def test_early_stop_audits_the_stored_baseline_too(run: Any, recorded: Path) -> None:
    honest = run(options.EARLY_STOP)
    honest.stdout.fnmatch_lines([f"NOTE stored baseline {SNAPSHOT_GLOB}: audited 8 of 40 examples*all agree"])
    edit(recorded, lambda r: forge_answers(r, list(r["predictions"])))
    assert_refused(run(options.EARLY_STOP), "*does not hold the base model's answers*")
