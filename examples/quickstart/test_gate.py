"""The smallest useful gate: run with --ftgate-adapter=DIR (and --ftgate-base=MODEL)."""

import pytest


@pytest.mark.ftgate("fpb", max_drop=2.0)  # FPB sentiment must not drop more than 2 points
def test_fpb_does_not_forget():
    pass  # the plugin checks the threshold itself


@pytest.mark.ftgate("medmcqa", min_gain=5.0)  # the medical adapter must help by 5 points
def test_medmcqa_improves(ftgate_comparison):
    # Custom assertions see the whole paired comparison.
    assert ftgate_comparison.tuned.metrics["unparsed_rate"] <= ftgate_comparison.base.metrics["unparsed_rate"] + 5
