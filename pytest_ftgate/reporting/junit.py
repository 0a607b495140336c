"""JUnit XML: ``ftgate_*`` properties of a gated test (``record_property`` pairs)."""

from __future__ import annotations

from pytest_ftgate.reporting.record import GateRecord
from pytest_ftgate.text import safe


def junit_properties(record: GateRecord) -> list[tuple[str, str]]:
    """``(name, value)`` pairs for ``record_property`` / ``item.user_properties`` (JUnit XML).
    An errored gate has ``ftgate_verdict`` ``error`` and ``ftgate_error``, and no numbers. A gate
    with a forgetting curve adds ``ftgate_curve_points`` and ``ftgate_forgetting_from`` (the first
    step whose drop is proven beyond ``max_drop``, the checkpoint path when its step is unknown,
    or ``none``)."""
    if record.outcome == "error":
        return [
            ("ftgate_benchmark", safe(record.benchmark)),
            ("ftgate_verdict", "error"),
            ("ftgate_error", safe(record.error or "")),
            *_curve_properties(record),
        ]
    note = [("ftgate_baseline", safe(record.baseline_note))] if record.baseline_note else []
    return [
        ("ftgate_benchmark", safe(record.benchmark)),
        ("ftgate_base", f"{record.base:.2f}"),
        ("ftgate_tuned", f"{record.tuned:.2f}"),
        ("ftgate_delta", f"{record.delta:+.2f}"),
        ("ftgate_ci_low", f"{record.ci[0]:+.2f}"),
        ("ftgate_ci_high", f"{record.ci[1]:+.2f}"),
        ("ftgate_n", str(record.n)),
        ("ftgate_lost", str(record.lost)),
        ("ftgate_gained", str(record.gained)),
        ("ftgate_p_value", f"{record.p_value:.4g}"),
        ("ftgate_verdict", record.outcome),
        *note,
        *_curve_properties(record),
    ]


def _curve_properties(record: GateRecord) -> list[tuple[str, str]]:
    if record.curve is None:
        return []
    first = record.curve.first_proven_drop()
    where = "none" if first is None else str(first.step) if first.step is not None else safe(first.adapter)
    return [("ftgate_curve_points", str(len(record.curve.points))), ("ftgate_forgetting_from", where)]

