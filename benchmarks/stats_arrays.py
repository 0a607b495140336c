"""Vectorised twins of ``pytest_ftgate.stats`` for the simulation scripts (numpy in, numpy out).

``score_interval_array`` and ``early_stop_decision_array`` use the same statistic, the same
bisections and the same rules as the scalar ``stats.score_interval`` and
``stats.early_stop_decision`` (default policy), so millions of decisions take seconds; the scripts
re-check a sample of them against the scalar functions, and tests/test_stats.py and
tests/test_early_stop.py check that they agree.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pytest_ftgate.stats.paired import _BISECT_STEPS, _z  # noqa: E402
from pytest_ftgate.stats.sequential import (  # noqa: E402
    _CS_PRIOR,
    _CS_SLACK,
    _CS_STEPS,
    _count,
    _first_passing_diff,
    _log_falling,
    _thresholds_args,
)


def score_interval_array(n: Any, lost: Any, gained: Any, confidence: float = 0.95) -> tuple[Any, Any]:
    """Vectorised ``score_interval`` (numpy arrays in, ``(lower, upper)`` arrays in points out).

    The same statistic (``_tango_z``) and the same bisection as the scalar function, for
    simulations.
    """
    z = _z(confidence)
    n, c, b = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (n, lost, gained)))
    if np.any((c < 0) | (b < 0) | (b + c > n)):
        raise ValueError("need 0 <= lost, gained and lost + gained <= n")
    empty = n == 0
    nn = np.where(empty, 1.0, n)

    def stat(d: Any) -> Any:  # _tango_z, elementwise
        w = (2 * nn - b + c) * d - (b + c)
        x = 8 * nn * c * d * (1 - d)
        s = np.sqrt(np.maximum(w * w + x, 0.0))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            q = np.where(w <= 0, (s - w) / (4 * nn), 2 * c * d * (1 - d) / (s + w))
            var = 2 * q + d * (1 - d)
            ok = var > 0
            v = np.where(ok, var, 1.0)
            num = b - c - nn * d
            root_nv = np.sqrt(nn * v)
            score = num / root_nv
            a = d * ((1 - d) * (1 - 2 * d) - 6 * q) / (6 * root_nv * v)
            disc = 1 + 4 * a * (score + a)
            out = np.where(
                disc > 0,
                2 * (score + a) / (1 + np.sqrt(np.maximum(disc, 0.0))),
                -0.5 / np.where(disc > 0, 1.0, a),
            )
        degenerate = np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0))
        return np.where(ok, out, degenerate)

    d_hat = np.where(empty, 0.0, (b - c) / nn)
    lo, hi = np.full(n.shape, -1.0), d_hat.copy()
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        above = stat(mid) > z
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    lower = (lo + hi) / 2
    lo, hi = d_hat.copy(), np.ones(n.shape)
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        below = stat(mid) < -z
        lo, hi = np.where(below, lo, mid), np.where(below, mid, hi)
    upper = (lo + hi) / 2
    return (np.where(empty, -100.0, 100 * lower), np.where(empty, 100.0, 100 * upper))


def early_stop_decision_array(
    lost: Any,
    gained: Any,
    n: int,
    n_max: int,
    *,
    max_drop: float | None = None,
    min_gain: float | None = None,
    confidence: float = 0.95,
) -> Any:
    """Vectorised ``early_stop_decision`` for the default policy, for simulations.

    ``lost`` and ``gained`` are arrays of counts after the same ``n`` of ``n_max`` examples.
    Returns an array of ``"pass"``, ``"fail"`` or ``"continue"`` (the scalar's ``None``): the
    same rule and the same arithmetic as the scalar function (numpy imported here only).
    """
    n, n_max = _count("n", n), _count("n_max", n_max)
    if n_max < 1 or n > n_max:
        raise ValueError(f"need 1 <= n_max and n <= n_max; got {n=}, {n_max=}")
    _z(confidence)
    _thresholds_args(max_drop, min_gain)
    l, g = np.broadcast_arrays(np.asarray(lost, dtype=np.int64), np.asarray(gained, dtype=np.int64))
    if np.any((l < 0) | (g < 0) | (l + g > n)):
        raise ValueError("need 0 <= lost, gained and lost + gained <= n")
    z = n - l - g
    rest = n_max - n
    d_star = _first_passing_diff(-n_max - 1, n_max + 1, n_max, max_drop, min_gain)  # may be +-(n_max+1)
    if n == n_max:
        return np.where(g - l >= d_star, "pass", "fail")
    det_pass = g - l - rest >= d_star
    det_fail = g - l + rest < d_star
    undecided = ~(det_pass | det_fail)

    lgamma = np.frompyfunc(math.lgamma, 1, 1)

    def lgam(x: Any) -> Any:
        return lgamma(x).astype(float)

    def digamma(x: Any) -> Any:
        x = np.array(x, dtype=float)
        r = np.zeros_like(x)
        for _ in range(8):
            small = x < 8.0
            r -= np.where(small, 1.0 / x, 0.0)
            x = np.where(small, x + 1.0, x)
        f = 1.0 / (x * x)
        return r + np.log(x) - 0.5 / x - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (1 / 240 - f / 132))))

    def log_falling(big: Any, k: Any) -> Any:
        big = np.maximum(big, k)
        return np.where(k == 0, 0.0, lgam(big + 1) - lgam(big - k + 1))

    def d_log_falling(big: Any, k: Any) -> Any:
        big = np.maximum(big, k)
        return np.where(k == 0, 0.0, digamma(big + 1) - digamma(big - k + 1))

    a = _CS_PRIOR
    polya = lgam(np.full(l.shape, sum(a))) - lgam(sum(a) + n + 0 * l)
    for k, ai in zip((l, g, z), a):
        polya = polya + lgam(ai + k) - math.lgamma(ai)
    thr = math.log(1 - confidence) + polya + _log_falling(n_max, n) - _CS_SLACK

    def line_max(v: Any) -> Any:  # the scalar _FiniteCS.line_max with slope 1
        lo = np.maximum(l, g - v).astype(float)
        hi = np.maximum((n_max - v - z) / 2, lo)

        def deriv(x: Any) -> Any:
            return d_log_falling(x, l) + d_log_falling(x + v, g) - 2 * d_log_falling(n_max - 2 * x - v, z)

        at_lo = (hi - lo < 1e-12) | (deriv(lo) <= 0)
        at_hi = deriv(hi) >= 0
        blo, bhi = lo.copy(), hi.copy()
        for _ in range(_CS_STEPS):
            mid = (blo + bhi) / 2
            up = deriv(mid) > 0
            blo, bhi = np.where(up, mid, blo), np.where(up, bhi, mid)
        x = np.where(at_lo, lo, np.where(at_hi, hi, (blo + bhi) / 2))
        return log_falling(x, l) + log_falling(x + v, g) + log_falling(n_max - 2 * x - v, z)

    # lines inside the domain for the undecided entries (others: any valid line, result unused)
    v_above = np.clip(d_star, g - l - rest + 1, g - l + rest)
    below, above = line_max(v_above - 1), line_max(v_above)
    in_below, in_above = below > thr, above > thr
    out = np.where(
        in_below & in_above,
        "continue",
        np.where(
            in_below,
            "fail",
            np.where(in_above, "pass", np.where(above > below, "pass", np.where(below > above, "fail", "continue"))),
        ),
    )
    out = np.where(undecided, out, np.where(det_pass, "pass", "fail"))
    return out
