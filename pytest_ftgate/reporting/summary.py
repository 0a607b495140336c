"""What every renderer says the same way: the headline, row labels, the seed study's decision
framework, numbers as text. Pure functions over ``GateRecord``s; text from data goes through
``text.safe``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pytest_ftgate.text import safe

if TYPE_CHECKING:
    from pytest_ftgate.reporting.record import GateRecord

# --- the seed study's decision framework -----------------------------------------------------

LOW_BASELINE = 40.0
HIGH_BASELINE = 70.0


def advice(base_score: float) -> str:
    """The seed study's decision framework for a baseline score (points, 0-100).

    Below 40: train aggressively. 40 to 70 (both included): train conservatively and monitor.
    Above 70: don't fine-tune, or use very conservative parameters (the forgetting case).
    """
    if base_score < LOW_BASELINE:
        return "baseline below 40%: train aggressively"
    if base_score <= HIGH_BASELINE:
        return "baseline 40-70%: train conservatively, monitor"
    return "baseline above 70%: don't fine-tune, or use very conservative parameters"


def outcome_note(record: GateRecord) -> str:
    """What fine-tuning measurably did: ``improved +6.8``, ``regressed -28.4 (forgetting)``, or
    ``no clear change (-1.2, interval -4.0 to +1.6)`` when the interval includes zero."""
    low, high = record.ci
    if high < 0:
        return f"regressed {signed(record.delta)} (forgetting)"
    if low > 0:
        return f"improved {signed(record.delta)}"
    return f"no clear change ({signed(record.delta)}, interval {signed(low)} to {signed(high)})"



def headline(records: Sequence[GateRecord]) -> str:
    """``1 of 3 benchmarks regressed``, ``all 3 benchmarks passed``, ``2 of 4 gates failed, 1
    inconclusive``, ``FPB errored``, ``FPB measured (no threshold)``. Titles are escaped (``safe``)."""
    total = len(records)
    if total == 0:
        return "no gates ran"
    noun = "benchmarks" if len({r.benchmark for r in records}) == total else "gates"
    errored = [r for r in records if r.outcome == "error"]
    failed = [r for r in records if r.outcome == "fail"]
    unsure = sum(r.outcome == "inconclusive" for r in records)
    measured = sum(r.outcome == "measured" for r in records)
    own = sum(r.test_outcome == "failed" and r.outcome != "fail" for r in records)
    own_note = (
        f" ({own} test{'s' if own > 1 else ''} failed on {'their' if own > 1 else 'its'} own assertions)" if own else ""
    )
    if not errored and not failed and not unsure:
        if not measured:
            text = f"all {total} {noun} passed" if total > 1 else f"{safe(records[0].title)} passed"
        elif measured == total:
            text = f"all {total} {noun} measured" if total > 1 else f"{safe(records[0].title)} measured"
            text += " (no threshold)"
        else:
            text = f"{total - measured} of {total} {noun} passed, {measured} measured (no threshold)"
        return text + own_note
    if total == 1:  # "FPB regressed", not "1 of 1 benchmarks regressed (FPB)"
        r = records[0]
        word = {"fail": "regressed" if r.delta < 0 else "failed", "error": "errored"}.get(r.outcome, r.outcome)
        return f"{safe(r.title)} {word}{own_note}"
    parts: list[str] = []
    verb = "regressed" if all(r.delta < 0 for r in failed) else "failed"
    for word, group in (("errored", errored), (verb, failed)):
        if group:
            names = ", ".join(safe(r.title) for r in group[:4]) + (", ..." if len(group) > 4 else "")
            count = f"{len(group)}" if parts else f"{len(group)} of {total} {noun}"
            parts.append(f"{count} {word} ({names})")
    if unsure:
        parts.append(f"{unsure} inconclusive" if parts else f"{unsure} of {total} {noun} inconclusive")
    return ", ".join(parts) + own_note


def first_per_benchmark(records: Sequence[GateRecord]) -> list[GateRecord]:
    """The decision framework is about a benchmark, not a test: one record per benchmark (with
    numbers: errored gates have none)."""
    seen: dict[str, GateRecord] = {}
    for r in records:
        if r.outcome != "error":
            seen.setdefault(r.benchmark, r)
    return list(seen.values())


def row_labels(records: Sequence[GateRecord]) -> list[str]:
    """Benchmark titles (escaped); when a benchmark has several gates, the test name tells them apart."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.benchmark] = counts.get(r.benchmark, 0) + 1
    labels = []
    for r in records:
        if counts[r.benchmark] == 1:
            labels.append(r.title)
        else:
            test = r.nodeid.rsplit("::", 1)[-1].split("[", 1)[0]
            labels.append(f"{r.title} ({test})")
    if len(set(labels)) != len(labels):  # same test name in several files
        labels = [f"{r.title} ({r.nodeid})" for r in records]
    return [safe(label) for label in labels]


def models_line(records: Sequence[GateRecord]) -> str:
    bases = {r.base_model for r in records if r.base_model}
    tuneds = {r.tuned_model for r in records if r.tuned_model}
    if len(bases) == 1 and len(tuneds) == 1:
        return safe(f"base {next(iter(bases))} vs tuned {next(iter(tuneds))}")
    return ""



def signed(x: float) -> str:
    text = f"{x:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


