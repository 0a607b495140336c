"""Gate an adapter on your own data: the support-ticket router must not get worse."""

import pytest


@pytest.mark.ftgate("tickets", max_drop=5.0)
def test_ticket_routing_does_not_regress(ftgate_comparison):
    # Every lost example is available with both models' replies, for your own checks.
    for flip in ftgate_comparison.lost:
        assert flip.gold in ("billing", "bug", "other")
