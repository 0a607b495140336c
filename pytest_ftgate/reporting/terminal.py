"""The terminal summary: one table for the run, the headline, errors, notes and the decision
framework, through a pytest-like terminal writer. Text from data goes through ``text.safe``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pytest_ftgate.reporting.curve import (
    PROVEN_MARK,
    curve_heading,
    curve_rows,
    drop_sentence,
    overview,
    shared_base,
    with_curves,
)
from pytest_ftgate.reporting.record import GateRecord, overall_outcome
from pytest_ftgate.reporting.summary import (
    advice,
    duration,
    first_per_benchmark,
    gate_notes,
    headline,
    models_line,
    outcome_note,
    record_notes,
    row_labels,
    shared_evaluations,
    signed,
)
from pytest_ftgate.text import safe

SHARED_TIME = "shared"  # the time column of a test that reused an earlier row's evaluation

_OUTCOME_MARKUP = {
    "pass": {"green": True},
    "fail": {"red": True, "bold": True},
    "inconclusive": {"yellow": True},
    "measured": {"cyan": True},
    "error": {"red": True, "bold": True},
}


def summary_lines(records: Sequence[GateRecord], *, markup: bool) -> list[tuple[str, dict[str, bool]]]:
    """The lines of the terminal summary (table, headline, errors, notes, advice), each with its
    markup. Text from data and models is escaped (``safe``). A test that reused an earlier row's
    evaluation (several tests on one benchmark) shows ``shared`` in the time column, not the
    same time again.

    ``markup=False`` gives empty markup dicts (a terminal without colour, or ``--color=no``).
    """
    if not records:
        return []
    conf = records[0].confidence
    ci_head = f"{conf:.0%} CI" if all(r.confidence == conf for r in records) else "CI"
    header = ["benchmark", "base", "tuned", "delta", ci_head, "n", "verdict", "time"]
    labels = row_labels(records)
    rows = []
    for label, r, shared in zip(labels, records, shared_evaluations(records)):
        if r.outcome == "error":  # no numbers: the comparison could not be computed
            rows.append([label, "-", "-", "-", "-", "-", "error", "-"])
            continue
        verdict = r.outcome
        if r.test_outcome == "failed" and r.outcome != "fail":
            verdict += " (test failed)"
        rows.append(
            [
                label,
                f"{r.base:.1f}",
                f"{r.tuned:.1f}",
                signed(r.delta),
                f"[{signed(r.ci[0])}, {signed(r.ci[1])}]",
                str(r.n),
                verdict,
                SHARED_TIME if shared else duration(r.seconds),
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {1, 2, 3, 5, 7}

    def fmt(cells: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    def mk(**kw: bool) -> dict[str, bool]:
        return dict(kw) if markup else {}

    lines: list[tuple[str, dict[str, bool]]] = [(fmt(header), mk(bold=True))]
    for r, row in zip(records, rows):
        colour = "fail" if r.test_outcome == "failed" else r.outcome
        lines.append((fmt(row), mk(**_OUTCOME_MARKUP.get(colour, {}))))
    overall = overall_outcome(records)
    lines.append(("", {}))
    lines.append((f"ftgate: {headline(records)}", mk(**_OUTCOME_MARKUP[overall])))
    for r in records:
        if r.error is not None:
            lines.append((f"ftgate: {safe(r.nodeid)} errored: {safe(r.error)}", mk(**_OUTCOME_MARKUP["error"])))
    for label, r in zip(labels, records):
        lines += [(f"ftgate: {label}: {safe(note)}", {}) for note in record_notes(r)]
    lines += [(f"ftgate: {safe(note)}", {}) for note in gate_notes(records)]
    models = models_line(records)
    if models:
        lines.append((models, {}))
    firsts = first_per_benchmark(records)
    if firsts:
        lines.append(("decision framework (seed study), by baseline:", {}))
        width = max(len(safe(r.title)) for r in firsts)
        for r in firsts:
            lines.append((f"  {safe(r.title).ljust(width)}  {advice(r.base)}; measured: {outcome_note(r)}", {}))
    return lines + curve_lines(records, markup=markup)


def curve_lines(records: Sequence[GateRecord], *, markup: bool) -> list[tuple[str, dict[str, bool]]]:
    """The forgetting curves: per gated test with a curve, a table (step, score, delta, interval,
    verdict) and the line naming the first step whose drop is proven beyond the margin; then,
    when several benchmarks have curves, one benchmark x step table of deltas. Nothing without
    curves."""

    def mk(**kw: bool) -> dict[str, bool]:
        return dict(kw) if markup else {}

    lines: list[tuple[str, dict[str, bool]]] = []
    for label, _, curve in with_curves(records):
        rows = curve_rows(curve)
        conf = {point.numbers.confidence for point in curve.points}
        with_base = shared_base(curve) is None  # the base differs between checkpoints: show it
        ci_head = f"{conf.pop():.0%} CI" if len(conf) == 1 else "CI"
        header = ["step", *(["base"] if with_base else []), "score", "delta", ci_head, "verdict"]
        cells = [
            [safe(row.label), *([row.base] if with_base else []), row.score, row.delta, row.interval, row.verdict]
            for row in rows
        ]
        fmt = _aligner([header, *cells], left={0, len(header) - 1})

        lines.append(("", {}))
        lines.append((f"forgetting curve: {label} ({curve_heading(curve)})", mk(bold=True)))
        lines.append((fmt(header), mk(bold=True)))
        for row, cell in zip(rows, cells):
            lines.append((fmt(cell), mk(**_OUTCOME_MARKUP["fail" if row.proven else row.outcome])))
        first = curve.first_proven_drop()
        lines.append((f"ftgate: {drop_sentence(curve, safe)}", mk(**_OUTCOME_MARKUP["fail"]) if first else {}))
    table = overview(records)
    if table is not None:
        head = ["benchmark", *(safe(c) for c in table.columns)]
        body = [[safe(title), *cells] for title, cells in table.rows]
        fmt_row = _aligner([head, *body], left={0})
        legend = f"forgetting curves: delta by step (points; {PROVEN_MARK} drop proven beyond the max_drop)"
        lines.append(("", {}))
        lines.append((legend, mk(bold=True)))
        lines.append((fmt_row(head), mk(bold=True)))
        lines += [(fmt_row(row), {}) for row in body]
    return lines


def _aligner(table: list[list[str]], *, left: set[int]) -> Callable[[list[str]], str]:
    """A row formatter for ``table``'s columns: indented, ``left`` columns left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]

    def fmt(row: list[str]) -> str:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return ("  " + "  ".join(cells)).rstrip()

    return fmt


def write_summary(
    writer: Any,
    records: Sequence[GateRecord],
    *,
    title: str = "ftgate",
    written: Sequence[tuple[str, str]] = (),
    errors: Sequence[str] = (),
) -> None:
    """Print the summary through a pytest-like terminal writer (``.sep``, ``.line``, ``.hasmarkup``)
    or pytest's ``TerminalReporter`` (``.write_sep`` instead of ``.sep``).

    ``written``: ``(what, path)`` pairs of report files, listed at the end (``("JSON report",
    "out/ftgate.json")``); ``errors``: lines about files that could not be written (shown in red).
    Nothing is printed when there are no records, files or errors.
    """
    if not records and not written and not errors:
        return
    markup = bool(getattr(writer, "hasmarkup", False))
    sep = writer.sep if hasattr(writer, "sep") else writer.write_sep
    sep("=", title, **({"bold": True} if markup else {}))
    for text, kw in summary_lines(records, markup=markup):
        writer.line(text, **kw)
    for what, path in written:
        writer.line(f"ftgate: {what} written to {safe(path)}")
    for error in errors:
        writer.line(f"ftgate: {safe(error)}", **({"red": True} if markup else {}))


