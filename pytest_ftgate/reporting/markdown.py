"""The Markdown summary (``$GITHUB_STEP_SUMMARY``, a pull-request comment). Text from data is
escaped: control characters (``text.safe``), HTML, Markdown punctuation, line breaks."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
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
from pytest_ftgate.reporting.files import atomic_write
from pytest_ftgate.reporting.record import GateRecord, overall_outcome
from pytest_ftgate.reporting.summary import (
    advice,
    duration,
    evaluation_seconds,
    first_per_benchmark,
    gate_notes,
    headline,
    outcome_note,
    record_notes,
    row_labels,
    signed,
)
from pytest_ftgate.text import safe


_OUTCOME_ICON = {
    "pass": "\u2705",
    "fail": "\u274c",
    "inconclusive": "\u26a0\ufe0f",
    "measured": "\U0001f4cf",  # a ruler: measured, not gated
    "error": "\u274c",
}
_EMPTY_REPLY = "<i>(empty reply)</i>"
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#])")


def to_markdown(records: Sequence[GateRecord], *, meta: Mapping[str, Any] | None = None) -> str:
    """A GitHub-flavoured Markdown summary for ``$GITHUB_STEP_SUMMARY`` or a pull-request comment.

    A headline with the overall verdict, a red CAUTION alert with the error text of each gate
    that errored, the table, notes (stored baselines, early stops, drift, what the gate said), the
    decision framework per benchmark, and a collapsed block with the top lost examples for each
    gate that did not pass. Text from data and models is escaped (control characters, HTML,
    Markdown punctuation, line breaks).
    """
    meta = dict(meta or {})
    overall = overall_outcome(records)
    out = [f"### {_OUTCOME_ICON[overall]} ftgate: {_md_escape(headline(records))}", ""]
    context = _md_context(records, meta)
    if context:
        out += [context, ""]
    if not records:
        return "\n".join(out).rstrip() + "\n"

    for r in records:
        if r.error is not None:
            out += ["> [!CAUTION]", f"> `{_code(r.nodeid)}` errored: {_md_escape(r.error)}", ""]

    labels = row_labels(records)
    conf = records[0].confidence
    ci_head = f"{conf:.0%} CI" if all(r.confidence == conf for r in records) else "CI"
    out.append(f"| Benchmark | Base | Tuned | \u0394 | {ci_head} | n | Verdict |")
    out.append("|:--|--:|--:|--:|:-:|--:|:--|")
    for label, r in zip(labels, records):
        if r.outcome == "error":
            none = " | ".join(["\u2014"] * 5)
            out.append(f"| {_cell(label)} | {none} | {_OUTCOME_ICON['error']} error |")
            continue
        delta = signed(r.delta)
        if r.outcome == "fail":
            delta = f"**{delta}**"
        verdict = f"{_OUTCOME_ICON.get(r.outcome, '')} {r.outcome}"
        rule = _rule(r) or ("no threshold" if r.outcome == "measured" else "")
        if rule:
            verdict += f" ({rule})"
        if r.test_outcome == "failed" and r.outcome != "fail":
            verdict += ", test failed"
        out.append(
            f"| {_cell(label)} | {r.base:.1f} | {r.tuned:.1f} | {delta} | "
            f"{signed(r.ci[0])} to {signed(r.ci[1])} | {r.n} | {_cell(verdict)} |"
        )
    out.append("")

    notes = [f"- {_cell(label)}: {_cell(note)}" for label, r in zip(labels, records) for note in record_notes(r)]
    notes += [f"- {_cell(note)}" for note in gate_notes(records)]
    if notes:
        out += ["**Notes**", "", *notes, ""]

    firsts = first_per_benchmark(records)
    if firsts:
        out.append("**Decision framework** (seed study: the baseline decides how hard to fine-tune)")
        out.append("")
        out.append("| Benchmark | Baseline | Advice | Measured outcome |")
        out.append("|:--|--:|:--|:--|")
        for r in firsts:
            out.append(f"| {_cell(r.title)} | {r.base:.1f} | {_cell(advice(r.base))} | {_cell(outcome_note(r))} |")
        out.append("")

    out += _curve_sections(records)

    for label, r in zip(labels, records):
        if r.outcome in ("pass", "error"):  # an error is in its CAUTION alert above
            continue
        icon = _OUTCOME_ICON.get(r.outcome, "")
        shown = f"; first {len(r.top_lost)} lost below" if r.top_lost and r.lost > len(r.top_lost) else ""
        summary = f"{icon} {label}: {r.lost} examples lost, {r.gained} gained{shown}"
        out.append(f"<details><summary>{html.escape(summary)}</summary>")
        out.append("")
        if r.reason:
            out.append(_md_escape(" ".join(r.reason.split())))
            out.append("")
        if r.top_lost:
            out.append("| Lost example | Gold | Base | Tuned |")
            out.append("|:--|:--|:--|:--|")
            for ex in r.top_lost:
                out.append(
                    f"| {_cell(ex.text, 200)}<br><sub>{_cell(ex.id, 60)}</sub> | {_cell(ex.gold, 40)} | "
                    f"{_cell(ex.base_output, 80, empty=_EMPTY_REPLY)} | {_cell(ex.tuned_output, 80, empty=_EMPTY_REPLY)} |"
                )
        else:
            out.append("No example was lost.")
        out.append("")
        out.append("</details>")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _curve_sections(records: Sequence[GateRecord]) -> list[str]:
    """Per gated test with a forgetting curve: its table (step, checkpoint, score, delta,
    interval, verdict) and the sentence naming the first proven drop; then the benchmark x step
    overview when several benchmarks have curves. Empty without curves."""
    out: list[str] = []
    for label, _, curve in with_curves(records):
        rows = curve_rows(curve)
        conf = {point.numbers.confidence for point in curve.points}
        ci_head = f"{conf.pop():.0%} CI" if len(conf) == 1 else "CI"
        with_base = shared_base(curve) is None
        out.append(f"**Forgetting curve: {_cell(label)}** ({_md_escape(curve_heading(curve))})")
        out.append("")
        base_head = " Base |" if with_base else ""
        out.append(f"| Step | Checkpoint |{base_head} Score | \u0394 | {ci_head} | Verdict |")
        out.append(f"|--:|:--|{'--:|' if with_base else ''}--:|--:|:-:|:--|")
        for row in rows:
            delta = f"**{row.delta}**" if row.proven else row.delta
            base = f" {row.base} |" if with_base else ""
            interval = row.interval[1:-1].replace(", ", " to ")
            verdict = f"{_OUTCOME_ICON.get(row.outcome, '')} {_cell(row.verdict)}"
            out.append(
                f"| {_cell(row.label)} | {_cell(row.adapter)} |{base} {row.score} | {delta} | {interval} | {verdict} |"
            )
        out += ["", _md_escape(drop_sentence(curve, str)), ""]
    table = overview(records)
    if table is not None:
        mark = _md_escape(PROVEN_MARK)
        out.append(f"**Forgetting curves**: \u0394 by step (points; {mark} drop proven beyond the max drop)")
        out.append("")
        out.append("| Benchmark | " + " | ".join(_cell(column) for column in table.columns) + " |")
        out.append("|:--|" + "--:|" * len(table.columns))
        for title, cells in table.rows:
            out.append(f"| {_cell(title)} | " + " | ".join(_md_escape(cell) or "\u2014" for cell in cells) + " |")
        out.append("")
    return out


def write_markdown(
    path: str | os.PathLike[str],
    records: Sequence[GateRecord],
    *,
    meta: Mapping[str, Any] | None = None,
    append: bool | None = None,
) -> Path:
    """Write the Markdown summary. ``append=None`` appends when ``path`` is ``$GITHUB_STEP_SUMMARY``
    (that file collects every step's summary), and otherwise replaces the file atomically."""
    target = Path(path)
    text = to_markdown(records, meta=meta)
    if append is None:
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        append = summary is not None and summary != "" and _same_path(target, Path(summary))
    if append:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as handle:
            handle.write(text)
        return target
    return atomic_write(target, text.encode("utf-8"))


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _md_context(records: Sequence[GateRecord], meta: Mapping[str, Any]) -> str:
    base = meta.get("base") or next((r.base_model for r in records if r.base_model), None)
    tuned = (
        meta.get("adapter") or meta.get("candidate") or next((r.tuned_model for r in records if r.tuned_model), None)
    )
    kind = "adapter" if meta.get("adapter") else "candidate" if meta.get("candidate") else "tuned"
    parts = []
    if base and tuned:
        parts.append(f"Base `{_code(base)}` vs {kind} `{_code(tuned)}`")
    elif base:
        parts.append(f"Base `{_code(base)}`")
    if meta.get("backend"):
        parts.append(f"backend {_md_escape(str(meta['backend']))}")
    modes = sorted({r.mode for r in records})
    if modes:
        parts.append(f"{'/'.join(modes)} mode")
    if meta.get("limit"):
        parts.append(f"limit {meta['limit']} examples per benchmark")
    if records:
        parts.append(f"{duration(evaluation_seconds(records))} of evaluation")
    return " \u00b7 ".join(parts)


def _rule(r: GateRecord) -> str:
    rules = []
    if r.max_drop is not None:
        rules.append(f"max drop {r.max_drop:g}")
    if r.min_gain is not None:
        rules.append(f"min gain {r.min_gain:g}")
    if rules and r.strict:
        rules.append("strict")
    return ", ".join(rules)


def _md_escape(text: str) -> str:
    """One line with control characters (line breaks too) escaped (``safe``), then Markdown
    punctuation and HTML, so that model output and data show as written."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(safe(text), quote=False))


def _cell(text: str, width: int | None = None, *, empty: str = "\u2014") -> str:
    """A table cell: clipped, escaped (pipes, HTML, emphasis), line breaks as ``<br>``.

    An empty value shows as ``empty`` (a bare empty cell reads as missing data)."""
    text = safe(str(text).replace("\r\n", "\n").replace("\r", "\n").strip(), newlines=True)
    if width is not None and len(text) > width:
        text = text[: width - 1].rstrip() + "\u2026"
    lines = [_md_escape(" ".join(line.split())) for line in text.split("\n")]
    return "<br>".join(line for line in lines if line) or empty


def _code(text: str) -> str:
    """Text for inside backticks: a backtick cannot end the span early, control characters escaped."""
    return safe(text).replace("`", "'")


