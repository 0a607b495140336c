"""What the renderers show of a forgetting curve (``pytest_ftgate.curve.Curve``), whatever the format.

The terminal, Markdown and PNG renderers all take their curve rows, the sentence naming the first
proven drop and the benchmark x step overview from here, so the formats cannot disagree. Text from
data (titles, checkpoint paths) is returned raw: each renderer escapes it its own way (``escape``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pytest_ftgate.curve import Curve, CurvePoint
from pytest_ftgate.reporting.record import GateRecord
from pytest_ftgate.reporting.summary import row_labels, signed

PROVEN_MARK = "*"  # an overview cell whose drop is proven beyond the benchmark's max_drop


def with_curves(records: Sequence[GateRecord]) -> list[tuple[str, GateRecord, Curve]]:
    """``(label, record, curve)`` of each record that carries a curve, in order. ``label`` is the
    record's row label in the main table (escaped with ``text.safe``)."""
    labels = row_labels(records)
    return [(label, r, r.curve) for label, r in zip(labels, records) if r.curve is not None]


def is_proven_drop(curve: Curve, point: CurvePoint) -> bool:
    """Whether this point's paired interval proves a drop beyond the curve's ``max_drop``."""
    return curve.max_drop is not None and point.ci[1] < -curve.max_drop


def point_label(point: CurvePoint) -> str:
    """``25`` for a known step, else the checkpoint path (raw)."""
    return str(point.step) if point.step is not None else point.adapter


def shared_base(curve: Curve) -> float | None:
    """The base score when every point has the same one (the base evaluated once), else None."""
    bases = {point.base for point in curve.points}
    return bases.pop() if len(bases) == 1 else None


@dataclass(frozen=True)
class CurveRow:
    """One checkpoint of a curve table, as text (``label`` and ``adapter`` raw, numbers formatted)."""

    label: str
    adapter: str
    base: str
    score: str
    delta: str
    interval: str
    verdict: str
    outcome: str  # pass / fail / inconclusive / measured: the colour or icon
    proven: bool  # drop proven beyond max_drop here


def curve_rows(curve: Curve) -> list[CurveRow]:
    """The table of one curve: a row per checkpoint in step order."""
    rows = []
    for point in curve.points:
        outcome = point.outcome or "measured"
        proven = is_proven_drop(curve, point)
        verdict = outcome + (" (drop proven)" if proven else "")
        rows.append(
            CurveRow(
                label=point_label(point),
                adapter=point.adapter,
                base=f"{point.base:.1f}",
                score=f"{point.tuned:.1f}",
                delta=signed(point.delta),
                interval=f"[{signed(point.ci[0])}, {signed(point.ci[1])}]",
                verdict=verdict,
                outcome=outcome,
                proven=proven,
            )
        )
    return rows


def curve_heading(curve: Curve) -> str:
    """``base 78.8, max drop 2.0, strict`` (what the table's rows are judged against)."""
    parts = []
    base = shared_base(curve)
    if base is not None:
        parts.append(f"base {base:.1f}")
    if curve.max_drop is not None:
        parts.append(f"max drop {curve.max_drop:.1f}")
    if curve.min_gain is not None:
        parts.append(f"min gain {curve.min_gain:.1f}")
    if curve.max_drop is None and curve.min_gain is None:
        parts.append("no threshold: measured")
    elif curve.strict:
        parts.append("strict")
    parts.append(f"{len(curve.points)} checkpoint{'s' if len(curve.points) != 1 else ''}")
    return ", ".join(parts)


def drop_sentence(curve: Curve, escape: Callable[[str], str]) -> str:
    """``forgetting proven from step 25: FPB -7.2 points [-11.0, -3.4] beyond -2.0``, or why no
    step is named. Title and checkpoint path go through ``escape``."""
    title = escape(curve.title)
    if curve.max_drop is None:
        return f"{title}: no max_drop, so no drop to prove (the curve is measured)"
    limit = signed(-curve.max_drop) if curve.max_drop else "0.0"
    point = curve.first_proven_drop()
    if point is None:
        count = len(curve.points)
        return f"{title}: no drop beyond {limit} proven at any of {count} checkpoint{'s' if count != 1 else ''}"
    where = f"step {point.step}" if point.step is not None else f"checkpoint {escape(point.adapter)}"
    low, high = point.ci
    return (
        f"forgetting proven from {where}: {title} {signed(point.delta)} points "
        f"[{signed(low)}, {signed(high)}] beyond {limit}"
    )


@dataclass(frozen=True)
class Overview:
    """Benchmark x step: ``columns`` (step labels, raw) and per benchmark its title (raw) and one
    cell per column (signed delta, ``PROVEN_MARK`` where the drop is proven; empty: not measured)."""

    columns: list[str]
    rows: list[tuple[str, list[str]]]


def overview(records: Sequence[GateRecord]) -> Overview | None:
    """The benchmark x step table of deltas when at least two benchmarks have curves (the first
    curve of each benchmark), else None. Known steps in increasing order, then checkpoints
    without a step in the order met."""
    first: dict[str, Curve] = {}
    for _, _, curve in with_curves(records):
        first.setdefault(curve.benchmark, curve)
    if len(first) < 2:
        return None
    steps = sorted({p.step for c in first.values() for p in c.points if p.step is not None})
    others = list(dict.fromkeys(p.adapter for c in first.values() for p in c.points if p.step is None))
    columns = [str(step) for step in steps] + others
    keys: list[tuple[int | None, str]] = [(step, "") for step in steps] + [(None, path) for path in others]
    index = {key: i for i, key in enumerate(keys)}  # a checkpoint named "25" is not step 25
    rows = []
    for curve in first.values():
        cells = [""] * len(keys)
        for point in curve.points:
            mark = PROVEN_MARK if is_proven_drop(curve, point) else ""
            key = (point.step, "") if point.step is not None else (None, point.adapter)
            cells[index[key]] = signed(point.delta) + mark
        rows.append((curve.title, cells))
    return Overview(columns, rows)
