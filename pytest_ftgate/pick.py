"""``--ftgate-pick=last-passing``: each gated test judges every checkpoint; the run picks the last
checkpoint that passes every gate.

Rules (README, "Checkpoints"):

- A test judges each checkpoint against its marker's thresholds (``judge``). It passes when at
  least one checkpoint passes its gate, and then reports the last such checkpoint; otherwise it
  fails on the final checkpoint's verdict, with every checkpoint's outcome listed. A checkpoint
  whose comparison raised (an adapter that does not fit, non-finite answers) is left out of the
  test's curve and named in its notes: it never counts as a pass. When every checkpoint raised,
  the test errors.
- The pick (``choose``), on the controller from every test's record: the last checkpoint (in
  step order) that passes the gate of every gated test. A test that measures only (no
  threshold) does not vote; a gated test that errored, or whose body failed, passes no
  checkpoint. No gated test, or no checkpoint passing them all: no pick, and the run fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_ftgate.checkpoints import Checkpoint
from pytest_ftgate.curve import Curve, CurvePoint
from pytest_ftgate.errors import FtgateError

if TYPE_CHECKING:
    from pytest_ftgate.reporting import GateRecord
    from pytest_ftgate.results import Comparison

RULE = "last-passing"
_FAILED = ("failed", "error")  # a test body that failed: its gate passing says nothing of the checkpoint


@dataclass
class Judged:
    """One test's checkpoints, judged: the comparison it reports (the last checkpoint passing its
    gate, else the final one that could be compared), its curve, and the checkpoints that errored."""

    comparison: Comparison
    checkpoint: Checkpoint
    curve: Curve
    errors: list[str] = field(default_factory=list)

    def outcomes(self) -> str:
        """``step 10 pass, step 20 fail, step 30 error`` (for a failure message)."""
        return ", ".join(f"{point.label} {point.outcome or 'measured'}" for point in self.curve.points)


def judge(
    points: Sequence[tuple[Checkpoint, Comparison]],
    errors: Sequence[tuple[Checkpoint, FtgateError]],
    *,
    max_drop: float | None,
    min_gain: float | None,
    strict: bool,
    render: Any = str,
) -> Judged:
    """Judge each compared checkpoint with the thresholds. ``points`` must not be empty (the
    caller errors when every checkpoint failed). ``render(exc)``: an error's text."""
    if not points:
        raise ValueError("judge needs at least one compared checkpoint")
    curve_points = []
    passing = None
    for checkpoint, comparison in points:
        verdict = comparison.verdict(max_drop=max_drop, min_gain=min_gain, strict=strict)
        if verdict.outcome == "pass":
            passing = (checkpoint, comparison)
        curve_points.append(
            CurvePoint(checkpoint.step, checkpoint.label, comparison, None if verdict.outcome == "measured" else verdict)
        )
    first = points[-1][1]
    curve = Curve(
        benchmark=first.benchmark,
        title=first.title,
        mode=first.base.mode,
        max_drop=max_drop,
        min_gain=min_gain,
        strict=strict,
        points=curve_points,
    )
    checkpoint, comparison = passing or points[-1]
    notes = [f"{c.name}: not compared ({render(exc)}); it passes no gate" for c, exc in errors]
    comparison.notes += [note for note in notes if note not in comparison.notes]
    return Judged(comparison, checkpoint, curve, notes)


@dataclass(frozen=True)
class Pick:
    """The run's pick: the checkpoint (None: none passes) and why, in one line."""

    checkpoint: Checkpoint | None
    why: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON report's ``pick`` object."""
        checkpoint = self.checkpoint
        return {
            "rule": RULE,
            "path": None if checkpoint is None else str(checkpoint.source),
            "label": None if checkpoint is None else checkpoint.label,
            "step": None if checkpoint is None else checkpoint.step,
            "why": self.why,
        }

    def line(self) -> str:
        """``ftgate pick: out/checkpoint-40 (last checkpoint passing every gate)``."""
        return f"ftgate pick: {'none' if self.checkpoint is None else self.checkpoint.label} ({self.why})"


def passing(record: GateRecord, final: Checkpoint) -> set[str] | None:
    """The labels of the checkpoints that pass ``record``'s gate; None when it only measured."""
    if record.outcome == "measured":
        return None
    if record.outcome == "error" or record.test_outcome in _FAILED:
        return set()
    curve = getattr(record, "curve", None)
    if curve is None:  # one checkpoint judged: the final one
        return {final.label} if record.outcome == "pass" else set()
    return {point.adapter for point in curve.points if point.outcome == "pass"}


def choose(checkpoints: Sequence[Checkpoint], records: Sequence[GateRecord]) -> Pick:
    """The last checkpoint that passes every gated test's gate (module docstring)."""
    if not checkpoints:
        return Pick(None, f"no checkpoints: {RULE} needs --ftgate-adapter")
    votes = [(record, passing(record, checkpoints[-1])) for record in records]
    gated = [(record, labels) for record, labels in votes if labels is not None]
    if not gated:
        return Pick(None, "no gated test ran, so no checkpoint can be picked")
    for record, labels in gated:
        if record.outcome == "error":
            return Pick(None, f"gate {record.nodeid} errored")
    common = set.intersection(*(labels for _, labels in gated))
    for checkpoint in reversed(checkpoints):
        if checkpoint.label in common:
            return Pick(checkpoint, "last checkpoint passing every gate")
    failing = [record.nodeid for record, labels in gated if not labels]
    if failing:
        return Pick(None, f"no checkpoint passes {failing[0]}" + (f" (and {len(failing) - 1} more)" if failing[1:] else ""))
    return Pick(None, "no checkpoint passes every gate: each passes some gates and fails others")
