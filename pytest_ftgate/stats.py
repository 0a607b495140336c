"""Paired statistics for base-vs-tuned comparisons. Pure functions; no pytest, no numpy required.

(Placeholder: interval and decision rule to be completed by the statistics work.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of ``lost`` vs ``gained`` discordant pairs."""
    n = lost + gained
    if n == 0:
        return 1.0
    k = min(lost, gained)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_diff_interval(
    base: Sequence[bool], tuned: Sequence[bool], confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for accuracy(tuned) - accuracy(base), in points, from paired outcomes."""
    n = len(base)
    if n == 0:
        return (0.0, 0.0)
    gained = sum(1 for b, t in zip(base, tuned) if t and not b)
    lost = sum(1 for b, t in zip(base, tuned) if b and not t)
    d = (gained - lost) / n
    var = ((gained + lost) / n - d * d) / n
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * math.sqrt(max(var, 0.0))
    return (100 * (d - half), 100 * (d + half))


def decide(
    delta: float,
    ci: tuple[float, float],
    *,
    max_drop: float | None = None,
    min_gain: float | None = None,
    strict: bool = False,
) -> tuple[str, str]:
    """Return (outcome, explanation suffix) for the user's thresholds, in points."""
    low, high = ci
    if max_drop is not None:
        if -delta > max_drop:
            return "fail", ""
        if strict and low < -max_drop:
            return "inconclusive", " The interval does not prove the drop is within the margin."
    if min_gain is not None:
        if delta < min_gain:
            return "fail", ""
        if strict and low < min_gain:
            return "inconclusive", " The interval does not prove the gain."
    return "pass", ""
