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
    """``1 of 3 benchmarks regressed (FPB)``, ``all 3 benchmarks passed``, ``2 of 4 gates failed
    (test_fpb[fpb], test_macro_f1), 1 inconclusive``, ``FPB errored``, ``FPB measured (no
    threshold)``. When a benchmark has several gates, the failing ones are named by their test
    (``node_names``), not by a title they share. Text is escaped (``safe``)."""
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
    name = dict(zip(map(id, records), node_names(records))) if noun == "gates" else None
    verb = "regressed" if all(r.delta < 0 for r in failed) else "failed"
    for word, group in (("errored", errored), (verb, failed)):
        if group:
            shown = [name[id(r)] if name else safe(r.title) for r in group[:4]]
            names = ", ".join(shown) + (", ..." if len(group) > 4 else "")
            count = f"{len(group)}" if parts else f"{len(group)} of {total} {noun}"
            parts.append(f"{count} {word} ({names})")
    if unsure:
        parts.append(f"{unsure} inconclusive" if parts else f"{unsure} of {total} {noun} inconclusive")
    return ", ".join(parts) + own_note


def node_names(records: Sequence[GateRecord]) -> list[str]:
    """Each record's test: ``test_fpb[fpb]`` (the node id after its file), or the whole node id
    where that name is in several files. Escaped (``safe``)."""
    names = [r.nodeid.rsplit("::", 1)[-1] for r in records]
    repeated = {n for n in names if names.count(n) > 1}
    return [safe(r.nodeid if n in repeated else n) for r, n in zip(records, names)]


def shared_evaluations(records: Sequence[GateRecord]) -> list[bool]:
    """For each record, whether it repeats an earlier record's evaluation: several tests on one
    benchmark share the gate's memoised results, so their times are one time, not several."""
    seen: set[tuple[object, ...]] = set()
    shared = []
    for r in records:
        key = (r.benchmark, r.mode, r.base_fingerprint, r.tuned_fingerprint, r.n, r.base_seconds, r.tuned_seconds)
        shared.append(r.outcome != "error" and key in seen)
        seen.add(key)
    return shared


def evaluation_seconds(records: Sequence[GateRecord]) -> float:
    """The run's evaluation time: each shared evaluation counted once."""
    return sum(r.seconds for r, shared in zip(records, shared_evaluations(records)) if not shared)


def record_notes(record: GateRecord) -> list[str]:
    """What a report says about one gate beyond its numbers: where its stored baseline came from,
    how it stopped early, its drift. Not escaped: each renderer escapes for its medium."""
    notes = [record.baseline_note] if record.baseline_note else []
    early = record.early
    if early is not None and early.used < early.total:
        low, high = early.interval
        notes.append(
            f"stopped early after {early.used} of {early.total} examples: the complete run's verdict "
            f"({early.outcome}) could no longer change (anytime-valid interval {signed(low)} to {signed(high)})"
        )
    elif early is not None:
        notes.append(f"early stop: all {early.total} examples evaluated (the verdict was open until the last)")
    drift = record.drift
    if drift is not None:
        notes.append(
            f"drift: gold answer log-prob {drift.get('gold_logprob_delta', math.nan):+.3f}, "
            f"KL(base||tuned) {drift.get('kl', math.nan):.4f} over {drift.get('n', math.nan):.0f} examples"
        )
    return notes


def gate_notes(records: Sequence[GateRecord]) -> list[str]:
    """What the gate said while computing the comparisons (``GateRecord.notes``), each line once.
    Not escaped."""
    return list(dict.fromkeys(note for r in records for note in r.notes))


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


