"""Sample sizes and power: the smallest drop n examples detect, the examples a verdict needs.

Units: drops and margins are percentage points; flip rates are fractions of the examples (0-1).
"""

from __future__ import annotations

import math
from statistics import NormalDist

from pytest_ftgate.stats.paired import _BISECT_STEPS, _EPS, _z, score_interval


def minimal_detectable_drop(
    n: int, flip_rate: float, confidence: float = 0.95, power: float = 0.8
) -> float:
    """Smallest true drop (points) that ``n`` paired examples detect with the given power.

    Two-sided McNemar (score) test of "no change" at level ``1 - confidence``, normal
    approximation (Connor 1987): the drop ``d`` solves
    ``d * sqrt(n) = z_conf * sqrt(f) + z_power * sqrt(f - d^2)`` for discordance ``f``.
    A drop cannot exceed the flip rate (every flip lost), so when even that is not detectable the
    answer is ``math.inf``; likewise for ``n == 0`` or ``flip_rate == 0``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= flip_rate <= 1.0:
        raise ValueError(f"flip_rate is a fraction of the examples (0-1), got {flip_rate!r}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be between 0 and 1 (exclusive), got {power!r}")
    za = _z(confidence)
    zb = NormalDist().inv_cdf(power)
    f = flip_rate
    if n == 0 or f == 0.0:
        return math.inf

    def excess(d: float) -> float:
        return d * math.sqrt(n) - za * math.sqrt(f) - zb * math.sqrt(max(f - d * d, 0.0))

    if excess(f) < 0:
        return math.inf
    lo, hi = 0.0, f
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if excess(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 100 * hi


def examples_needed(
    delta: float,
    flip_rate: float,
    margin: float,
    confidence: float = 0.95,
    *,
    gain: bool = False,
) -> int | None:
    """Examples the strict policy needs before its interval settles ``delta`` against the margin.

    The threshold on delta is ``-margin`` (a ``max_drop``) or ``+margin`` with ``gain=True`` (a
    ``min_gain``). Assuming the observed delta (points) and flip rate (fraction) hold, returns the
    smallest n whose score interval lies wholly on one side: lower bound >= threshold (pass) or
    upper bound < threshold (fail). ``None`` when no n settles it: delta sits on the threshold,
    or more than 10**12 examples would be needed.
    """
    if not 0.0 <= flip_rate <= 1.0:
        raise ValueError(f"flip_rate is a fraction of the examples (0-1), got {flip_rate!r}")
    threshold = margin if gain else -margin
    if abs(delta - threshold) <= _EPS:
        return None
    d = delta / 100
    f = min(max(flip_rate, abs(d)), 1.0)  # a change of d needs at least |d| flips
    above = delta > threshold

    def settles(size: int) -> bool:
        low, high = score_interval(size, size * (f - d) / 2, size * (f + d) / 2, confidence)
        return low >= threshold if above else high < threshold

    hi = 1
    while not settles(hi):
        hi *= 2
        if hi > 10**12:
            return None
    lo = hi // 2  # settles(lo) is False (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if settles(mid):
            hi = mid
        else:
            lo = mid
    return hi
