"""The fixed-n verdict: a measured delta and its interval against the user's thresholds."""

from __future__ import annotations

from pytest_ftgate.stats.paired import _EPS
from pytest_ftgate.stats.sample_size import examples_needed


def _pts(x: float, threshold: float | None = None) -> str:
    """Signed points, one decimal; two when one would print a bound equal to the threshold."""
    text = f"{x:+.1f}"
    if threshold is not None and x != threshold and text == f"{threshold:+.1f}":
        text = f"{x:+.2f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _about(count: int) -> str:
    """Round up to two significant figures: 2,412 -> '2,500'."""
    if count >= 100:
        step = 10 ** (len(str(count)) - 2)
        count = -(-count // step) * step
    return f"{count:,}"


def decide(
    delta: float,
    ci: tuple[float, float],
    *,
    max_drop: float | None = None,
    min_gain: float | None = None,
    strict: bool = False,
    n: int | None = None,
    flip_rate: float | None = None,
    confidence: float = 0.95,
) -> tuple[str, str]:
    """Return ``(outcome, explanation suffix)`` for the user's thresholds, in points.

    Default policy (the user's words): fail when the measured drop exceeds ``max_drop`` or the
    measured gain is below ``min_gain``, otherwise pass. When the interval crosses a threshold the
    suffix says the sample cannot support the verdict.

    Strict policy: per threshold, pass only when the interval proves it holds (lower bound >=
    ``-max_drop``, resp. >= ``min_gain``), fail when the interval proves it is violated (upper
    bound below the threshold), otherwise inconclusive. Any fail fails; else any inconclusive is
    inconclusive.

    With ``n`` and ``flip_rate`` (``(lost + gained) / n``) an unsettled threshold also says how
    many examples would settle it (``examples_needed``). The suffix starts with a space, or is
    empty when there is nothing to add to the caller's summary.
    """
    low, high = ci
    checks: list[tuple[float, str, bool, bool]] = []  # threshold, name, gain, measured ok
    if max_drop is not None:
        checks.append((-max_drop, f"{_pts(-max_drop)} margin", False, -delta <= max_drop + _EPS))
    if min_gain is not None:
        checks.append((min_gain, f"{_pts(min_gain)} required gain", True, delta >= min_gain - _EPS))

    outcomes = []
    notes = []
    for threshold, name, gain, measured_ok in checks:
        if low >= threshold:
            proven = "pass"
        elif high < threshold:
            proven = "fail"
        else:
            proven = "inconclusive"
        outcomes.append(proven if strict else ("pass" if measured_ok else "fail"))
        if proven != "inconclusive":
            continue
        settle = ""
        if n is not None and flip_rate is not None:
            margin = threshold if gain else -threshold
            need = examples_needed(delta, flip_rate, margin, confidence, gain=gain)
            if need is None:
                settle = "; the estimate sits on the threshold, so no sample size would settle it"
            else:
                settle = f"; about {_about(max(need, n + 1))} examples would settle it"
        if strict and delta >= threshold:
            notes.append(f"the interval reaches {_pts(low, threshold)}, below the {name}{settle}.")
        else:
            span = f"({_pts(low, threshold)}, {_pts(high, threshold)})"
            notes.append(f"the interval {span} crosses the {name}{settle}.")

    if "fail" in outcomes:
        outcome = "fail"
    elif "inconclusive" in outcomes:
        outcome = "inconclusive"
    else:
        outcome = "pass"
    if not notes:
        return outcome, ""
    if not strict:
        lead = "The sample cannot support this verdict:"
    elif outcome == "inconclusive":
        lead = "Inconclusive:"
    else:
        lead = "Also unsettled:"
    text = " ".join([notes[0]] + [note[0].upper() + note[1:] for note in notes[1:]])
    return outcome, f" {lead} {text}"
