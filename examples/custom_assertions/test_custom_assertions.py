"""Custom assertions on top of the marker: metrics, flips and drift are all on the comparison."""

import pytest


@pytest.mark.ftgate("fpb", max_drop=2.0)
def test_fpb_quality(ftgate_comparison):
    tuned = ftgate_comparison.tuned
    assert tuned.metrics["macro_f1"] >= 0.0, "macro F1 is reported for FPB"
    assert tuned.metrics["unparsed_rate"] <= 100.0
    # Never lose more than a handful of examples the base model got right, whatever the delta.
    assert len(ftgate_comparison.lost) <= max(5, ftgate_comparison.n // 10), ftgate_comparison.failure_detail()


@pytest.mark.ftgate("fpb", mode="logprob", max_drop=2.0)
def test_fpb_confidence_drift(ftgate_comparison):
    # In logprob mode the comparison also carries drift numbers, which move before accuracy does.
    assert ftgate_comparison.drift is not None
    assert ftgate_comparison.drift["kl"] < 5.0
