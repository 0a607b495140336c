"""Comparison objects: pairing, flips, messages, drift."""

from __future__ import annotations

import math

import pytest

from pytest_ftgate import EvalResult, ModelInfo, Prediction, compare
from pytest_ftgate.results import Comparison


def result(correct: list[bool], name: str = "fpb", logprobs: list[dict[str, float]] | None = None) -> EvalResult:
    predictions = [
        Prediction(
            f"e{i}",
            "positive" if ok else "negative",
            "positive" if ok else "negative",
            "positive",
            ok,
            f"sentence {i}",
            logprobs[i] if logprobs else None,
        )
        for i, ok in enumerate(correct)
    ]
    score = 100 * sum(correct) / len(correct)
    return EvalResult(
        name, ModelInfo("m", "f"), len(correct), score, {"accuracy": score}, predictions, 1.0, title="FPB"
    )


def test_pairs_and_flips() -> None:
    base = result([True, True, False, True])
    tuned = result([True, False, True, False])
    comparison = compare(base, tuned)
    assert comparison.delta == pytest.approx(-25.0)
    assert [f.id for f in comparison.lost] == ["e1", "e3"] and [f.id for f in comparison.gained] == ["e2"]
    assert comparison.lost[0].base_output == "positive" and comparison.lost[0].tuned_output == "negative"
    low, high = comparison.ci
    assert low < comparison.delta < high
    assert comparison.p_value == pytest.approx(1.0)


def test_message_reads_like_the_issue() -> None:
    comparison = compare(result([True] * 8 + [False] * 2), result([True] * 5 + [False] * 5))
    verdict = comparison.verdict(max_drop=2.0)
    assert verdict.outcome == "fail"
    assert verdict.reason.startswith(
        "FPB dropped 30.0 points (80.0 -> 50.0) after fine-tuning; allowed 2.0. 10 examples: 3 lost, 0 gained"
    )
    assert "lost e5: 'sentence 5'" in comparison.failure_detail()
    with pytest.raises(AssertionError, match="FPB dropped 30.0 points"):
        comparison.assert_no_regression(2.0)
    comparison.assert_no_regression(40.0)
    with pytest.raises(AssertionError, match="required gain 1.0"):
        comparison.assert_improves(1.0)


def test_a_candidate_model_is_named_as_such() -> None:
    comparison = Comparison(
        result([True] * 8 + [False] * 2), result([True] * 5 + [False] * 5), change="in the candidate"
    )
    assert comparison.verdict(max_drop=2.0).reason.startswith(
        "FPB dropped 30.0 points (80.0 -> 50.0) in the candidate;"
    )


def test_unpaired_results_are_refused() -> None:
    with pytest.raises(ValueError, match="same example ids"):
        compare(result([True, False]), result([True, False, True]))
    with pytest.raises(ValueError, match="same benchmark"):
        compare(result([True]), result([True], name="medmcqa"))


def test_drift_from_logprobs() -> None:
    base_lp = [{"positive": math.log(0.8), "negative": math.log(0.2)}] * 2
    tuned_lp = [{"positive": math.log(0.5), "negative": math.log(0.5)}] * 2
    comparison = compare(result([True, True], logprobs=base_lp), result([True, True], logprobs=tuned_lp))
    assert comparison.drift is not None
    assert comparison.drift["gold_logprob_delta"] == pytest.approx(math.log(0.5) - math.log(0.8))
    kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert comparison.drift["kl"] == pytest.approx(kl)
    assert "Drift: gold answer log-prob -0.470, KL(base||tuned) 0.1927." in comparison.summary()
    assert compare(result([True]), result([True])).drift is None
