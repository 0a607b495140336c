"""Sequential decisions: anytime-valid confidence sequences and early stopping.

Why a prior-posterior-ratio confidence sequence over the benchmark's composition
--------------------------------------------------------------------------------
Early stopping evaluates a uniformly shuffled benchmark of ``n_max`` examples in chunks. With
every model answer fixed, the benchmark is a finite population of ``L`` lost, ``G`` gained and
``Z`` unchanged examples, and the first ``n`` examples are a sample without replacement from it.
The quantity the gate cares about is the complete run's verdict, a function of ``(L, G)``.

For a candidate composition theta = (L, G, Z) the probability of the observed ordered sequence
depends only on the counts: ``P_theta = [L]_l [G]_g [Z]_z / [N]_n`` (falling factorials).
Mixing over a Dirichlet-multinomial prior on the composition (shares ~ Dirichlet(a)) gives the
Polya-urn probability ``m(l, g, z) = Gamma(A)/Gamma(A + n) * prod Gamma(a_i + k_i)/Gamma(a_i)``
(``A = sum a``), the same for every N. Under the true composition ``M_n = m / P_theta`` is a
non-negative supermartingale with ``M_0 = 1`` (a likelihood ratio of the mixture against the
truth), so by Ville's inequality it ever reaches ``1/alpha`` with probability at most
``alpha``: the sets ``{theta : P_theta > alpha * m}`` form a confidence sequence, valid
simultaneously over every n and for any (even data-dependent) choice of looks.
This is the prior-posterior-ratio confidence sequence of Waudby-Smith & Ramdas, "Confidence
sequences for sampling without replacement" (NeurIPS 2020), for three categories. Reasons:

* It is exact for sampling without replacement: no asymptotics, no i.i.d. assumption (the only
  randomness is the shuffle), and at ``n = n_max`` it collapses to the true composition, so the
  early-stopped verdict can be compared with the complete run's, not with a model of it.
* It depends on the counts only (not their order), which is all the runner has to pass.
* It is a joint set for (L, G), so it bounds every function of them at once: the full-run delta
  for ``max_drop`` and ``min_gain`` together, and the full-run Tango interval for ``strict``.
* Its width is about 1.6-1.7x the fixed-n Tango interval over the first 40% of the benchmark
  (the price of validity under continuous monitoring, as for any confidence sequence) and
  drops below it after about 80%, thanks to the finite-population correction. Alternatives:
  an alpha-spending schedule needs the looks fixed in advance (the runner's chunking may not
  be) and a Bonferroni split over ~20 looks is as wide; betting sequences for bounded means
  depend on the order of the outcomes, not just the counts; with-replacement sequences
  (Howard et al.) never collapse at n_max.

The prior only moves where the sequence is tightest (its validity holds for any prior):
Dirichlet(1, 1, 8) on (lost, gained, unchanged) centres it on a 20% flip rate, symmetric
between losses and gains; against a uniform prior it is 10-25% narrower at flip rates 5-20%.
Computation uses the convex relaxation (real-valued L, G; ``log P_theta`` is concave there), so
the reported sets contain the exact ones: still valid, at most a count wider.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pytest_ftgate.stats.paired import _BISECT_STEPS, _EPS, _tango_z, _z, score_interval
from pytest_ftgate.stats.verdict import decide

_CS_PRIOR = (1.0, 1.0, 8.0)  # Dirichlet prior on the (lost, gained, unchanged) shares
_CS_SLACK = 1e-6  # log-scale; absorbs rounding so that computed sets contain the exact ones
_CS_STEPS = 50  # bisection halvings of the inner (real-valued) maximisation


def _digamma(x: float) -> float:
    """psi(x) for x > 0: recurrence up to 8, then the asymptotic series (error < 1e-13)."""
    r = 0.0
    while x < 8.0:
        r -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    return r + math.log(x) - 0.5 / x - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (1 / 240 - f / 132))))


def _log_falling(big: float, k: int) -> float:
    """log of the falling factorial K (K-1) ... (K-k+1), for real K >= k."""
    if k == 0:
        return 0.0
    big = max(big, k)
    return math.lgamma(big + 1) - math.lgamma(big - k + 1)


def _d_log_falling(big: float, k: int) -> float:
    """Derivative of ``_log_falling`` in K (non-negative, decreasing in K)."""
    if k == 0:
        return 0.0
    big = max(big, k)
    return _digamma(big + 1) - _digamma(big - k + 1)


def _log_polya(lost: int, gained: int, same: int) -> float:
    """log probability of one ordered sequence with these counts under the Dirichlet-prior urn."""
    a = _CS_PRIOR
    total = math.lgamma(sum(a)) - math.lgamma(sum(a) + lost + gained + same)
    for k, ai in zip((lost, gained, same), a):
        total += math.lgamma(ai + k) - math.lgamma(ai)
    return total


def _count(name: str, value: Any) -> int:
    import operator

    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer count, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _cs_args(lost: Any, gained: Any, n: Any, n_max: Any, confidence: float) -> tuple[int, int, int, int | None]:
    lost, gained, n = _count("lost", lost), _count("gained", gained), _count("n", n)
    if lost + gained > n:
        raise ValueError(f"need lost + gained <= n; got {n=}, {lost=}, {gained=}")
    if n_max is not None:
        n_max = _count("n_max", n_max)
        if n_max < 1 or n > n_max:
            raise ValueError(f"need 1 <= n_max and n <= n_max; got {n=}, {n_max=}")
    _z(confidence)
    return lost, gained, n, n_max


class _FiniteCS:
    """The confidence sequence at one look: compositions (L, G) of an N-example benchmark with
    ``f(L, G) = log([L]_l [G]_g [Z]_z) > thr``. ``f`` is concave in real (L, G), so the set is
    convex and its extent along a line or a coordinate is found by nested bisection."""

    def __init__(self, lost: int, gained: int, n: int, n_max: int, confidence: float) -> None:
        self.l, self.g, self.z, self.big = lost, gained, n - lost - gained, n_max
        self.rest = n_max - n
        self.n = n
        self.thr = (
            math.log(1 - confidence) + _log_polya(lost, gained, self.z) + _log_falling(n_max, n) - _CS_SLACK
        )

    def f(self, big_l: float, big_g: float) -> float:
        return (
            _log_falling(big_l, self.l)
            + _log_falling(big_g, self.g)
            + _log_falling(self.big - big_l - big_g, self.z)
        )

    def line_max(self, slope: int, v: int) -> tuple[float, float]:
        """``(max f, argmax L)`` over real L on the line ``G = slope * L + v`` (slope 0 or 1).

        The line must meet the domain (L >= l, G >= g, Z >= z): callers keep v within
        ``domain(slope)``.
        """
        l, g, z, big = self.l, self.g, self.z, self.big
        lo = float(l) if slope == 0 else float(max(l, g - v))
        hi = max((big - v - z) / (1 + slope), lo)

        def deriv(x: float) -> float:
            return (
                _d_log_falling(x, l)
                + slope * _d_log_falling(slope * x + v, g)
                - (1 + slope) * _d_log_falling(big - (1 + slope) * x - v, z)
            )

        if hi - lo < 1e-12 or deriv(lo) <= 0:
            x = lo
        elif deriv(hi) >= 0:
            x = hi
        else:
            for _ in range(_CS_STEPS):
                mid = (lo + hi) / 2
                if deriv(mid) > 0:
                    lo = mid
                else:
                    hi = mid
            x = (lo + hi) / 2
        return self.f(x, slope * x + v), x

    def domain(self, slope: int) -> tuple[int, int]:
        """The values of ``G - L`` (slope 1) or ``G`` (slope 0) that the counts allow at all."""
        if slope == 1:
            return self.g - self.l - self.rest, self.g - self.l + self.rest
        return self.g, self.g + self.rest

    def inside(self, slope: int, v: int) -> bool:
        return self.line_max(slope, v)[0] > self.thr

    def extent(self, slope: int) -> tuple[int, int]:
        """Smallest and largest integer ``G - L`` (slope 1) or ``G`` (slope 0) in the set."""
        dlo, dhi = self.domain(slope)
        if self.n == 0 or dlo == dhi:
            return dlo, dhi
        centre = (self.g - self.l if slope else self.g) * self.big / self.n
        anchor = min(max(round(centre), dlo), dhi)
        if not self.inside(slope, anchor):  # h(v) is concave: its integer argmax by bisection
            lo, hi = dlo, dhi
            while lo < hi:
                mid = (lo + hi) // 2
                if self.line_max(slope, mid + 1)[0] > self.line_max(slope, mid)[0]:
                    lo = mid + 1
                else:
                    hi = mid
            anchor = lo
            if not self.inside(slope, anchor):  # cannot happen (the set holds the MLE); stay safe
                return dlo, dhi
        bounds = []
        for edge in (dlo, dhi):
            inner, outer = anchor, edge
            if self.inside(slope, outer):
                bounds.append(outer)
                continue
            while abs(outer - inner) > 1:
                mid = (inner + outer) // 2
                if self.inside(slope, mid):
                    inner = mid
                else:
                    outer = mid
            bounds.append(inner)
        return bounds[0], bounds[1]


def _infinite_cs(lost: int, gained: int, n: int, confidence: float) -> tuple[float, float]:
    """The with-replacement (infinite population) version: ``{p : l log p_L + g log p_G + z log p_Z
    > log(alpha m)}`` projected on ``p_G - p_L``; the Dirichlet-mixture (Robbins) sequence."""
    same = n - lost - gained
    if n == 0:
        return -1.0, 1.0
    thr = math.log(1 - confidence) + _log_polya(lost, gained, same) - _CS_SLACK

    def loglik(p_lost: float, mu: float) -> float:
        total = 0.0
        for k, p in ((lost, p_lost), (gained, p_lost + mu), (same, 1 - 2 * p_lost - mu)):
            if k:
                if p <= 0:
                    return -math.inf
                total += k * math.log(p)
        return total

    def h(mu: float) -> float:  # max over p_lost of the log-likelihood with p_gained - p_lost = mu
        lo, hi = max(0.0, -mu), max((1 - mu) / 2, max(0.0, -mu))

        def deriv(p: float) -> float:
            out = 0.0
            for k, q, w in ((lost, p, 1), (gained, p + mu, 1), (same, 1 - 2 * p - mu, -2)):
                if k:
                    out += w * (k / q if q > 0 else math.inf)
            return out

        for _ in range(_CS_STEPS + 10):
            mid = (lo + hi) / 2
            if deriv(mid) > 0:
                lo = mid
            else:
                hi = mid
        return max(loglik(lo, mu), loglik(hi, mu), loglik((lo + hi) / 2, mu))

    mu_hat = (gained - lost) / n
    bounds = []
    for edge in (-1.0, 1.0):
        inner, outer = mu_hat, edge
        if h(outer) > thr:
            bounds.append(outer)
            continue
        for _ in range(_BISECT_STEPS):
            mid = (inner + outer) / 2
            if h(mid) > thr:
                inner = mid
            else:
                outer = mid
        bounds.append(outer)  # the outer end: the reported interval contains the exact one
    return bounds[0], bounds[1]


def paired_confidence_sequence(
    lost: int, gained: int, n: int, *, confidence: float = 0.95, n_max: int | None = None
) -> tuple[float, float]:
    """Anytime-valid interval (points) for the paired difference, tuned - base, after n examples.

    ``lost``/``gained`` count the discordant pairs among the first ``n`` examples of a uniformly
    shuffled benchmark. With ``n_max`` (the benchmark's size) the interval is for the delta on all
    ``n_max`` examples, i.e. what the complete run would measure, and accounts for sampling
    without replacement (finite-population correction): it shrinks to that delta, exactly, at
    ``n == n_max``. Without ``n_max`` it is for the mean difference of an infinite population
    sampled with replacement (the Dirichlet-mixture sequence).

    Validity is time-uniform: the probability that the interval *ever* misses the target, over
    all n from 0 to ``n_max`` and however the looks are chosen, is at most ``1 - confidence``.
    Intersecting the intervals of successive looks stays valid. Method and reasons: the
    module docstring (prior-posterior-ratio confidence sequence for
    sampling without replacement, Waudby-Smith & Ramdas 2020). With ``n_max``, the bounds are
    multiples of ``100 / n_max`` and never leave what the counts allow deterministically.
    """
    lost, gained, n, n_max = _cs_args(lost, gained, n, n_max, confidence)
    if n_max is None:
        low, high = _infinite_cs(lost, gained, n, confidence)
        return 100 * low, 100 * high
    low, high = _FiniteCS(lost, gained, n, n_max, confidence).extent(1)
    return 100 * low / n_max, 100 * high / n_max


def _measured_ok(diff: int, size: int, max_drop: float | None, min_gain: float | None) -> bool:
    """The default policy's verdict (``decide``) for a full-run delta of ``diff / size``."""
    delta = 100 * diff / size
    if max_drop is not None and not -delta <= max_drop + _EPS:
        return False
    return min_gain is None or delta >= min_gain - _EPS


def _thresholds_args(max_drop: float | None, min_gain: float | None) -> None:
    if max_drop is None and min_gain is None:
        raise ValueError("early stopping needs a threshold: max_drop and/or min_gain")
    for name, value in (("max_drop", max_drop), ("min_gain", min_gain)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of points, got {value!r}")


@dataclass(frozen=True)
class EarlyStopPolicy:
    """What an early-stopped comparison is decided for (``Gate.compare(early_stop=...)``): the
    thresholds in points, at least one of them, and the strict or default policy."""

    max_drop: float | None = None
    min_gain: float | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        _thresholds_args(self.max_drop, self.min_gain)

    def decision(self, lost: int, gained: int, n: int, n_max: int, confidence: float = 0.95) -> str | None:
        """``early_stop_decision`` for these counts under this policy."""
        return early_stop_decision(
            lost, gained, n, n_max, max_drop=self.max_drop, min_gain=self.min_gain, strict=self.strict,
            confidence=confidence,
        )


_Z_TOL = 1e-7  # score statistics this close to +-z are settled by the interval itself


def _strict_outcome(
    size: int, big_l: int, big_g: int, thresholds: list[float], z: float, confidence: float
) -> str:
    """``decide(..., strict=True)`` for a complete run with these counts, without bisecting where the
    score statistic at the threshold settles it (low >= t iff Z(t) >= z; high < t iff Z(t) < -z)."""
    ci = None
    outcomes = []
    for t in thresholds:
        tf = t / 100
        if abs(tf) < 1 - 1e-9:
            score = _tango_z(size, big_l, big_g, tf)
            if score >= z + _Z_TOL:
                outcomes.append("pass")
                continue
            if score < -z - _Z_TOL:
                outcomes.append("fail")
                continue
            if -z + _Z_TOL < score < z - _Z_TOL:
                outcomes.append("inconclusive")
                continue
        if ci is None:
            ci = score_interval(size, big_l, big_g, confidence)
        low, high = ci
        outcomes.append("pass" if low >= t else "fail" if high < t else "inconclusive")
    if "fail" in outcomes:
        return "fail"
    return "inconclusive" if "inconclusive" in outcomes else "pass"


def early_stop_decision(
    lost: int,
    gained: int,
    n: int,
    n_max: int,
    *,
    max_drop: float | None = None,
    min_gain: float | None = None,
    strict: bool = False,
    confidence: float = 0.95,
) -> str | None:
    """Sequential gate: ``None`` to keep evaluating, or the complete run's outcome once it is settled.

    Call after each chunk of a uniformly shuffled benchmark of ``n_max`` examples, with the
    cumulative counts over the first ``n`` examples (``lost``: base right, tuned wrong;
    ``gained``: the reverse). Returns ``"pass"``, ``"fail"`` or (strict only) ``"inconclusive"``
    when every benchmark composition that is still plausible gives the complete run that outcome
    under ``decide`` with the same thresholds and policy; ``None`` otherwise. At ``n == n_max`` it
    always returns ``decide``'s outcome on the counts.

    "Still plausible" is the union of two checks, both about the complete run on all ``n_max``
    examples (not about a hypothetical population):

    * deterministic: the remaining ``n_max - n`` examples can each move the full-run delta by at
      most ``100 / n_max`` points (default policy); a stop from this check is always right;
    * probabilistic: the anytime-valid confidence sequence over the benchmark's composition
      (``paired_confidence_sequence``'s set, jointly over lost and gained counts, so it covers
      ``max_drop`` and ``min_gain`` together and the full-run Tango interval under ``strict``).

    Guarantee: if the examples are evaluated in a uniformly random order fixed independently of
    the answers, and each model's answer to each example is the same in the early and the
    complete run (greedy decoding, or cached outputs), then for any benchmark, any models and any
    schedule of calls (chunk sizes may change, even depending on what was seen), the probability
    that this function ever returns an outcome different from the complete run's verdict is at
    most ``1 - confidence``. Proof: the confidence sequence contains the true composition at
    every look except with probability ``1 - confidence`` (Ville's inequality), and an outcome is
    returned only when every composition in it yields that outcome. Naively re-testing a fixed-n
    interval after each chunk has no such guarantee (``benchmarks/simulate_early_stop.py``).

    ``confidence`` is both the level of that guarantee and, under ``strict``, the level of the
    Tango interval the complete run uses (as in ``decide``).
    """
    lost, gained, n, n_max = _cs_args(lost, gained, n, n_max, confidence)
    _thresholds_args(max_drop, min_gain)
    if n_max is None:
        raise ValueError("early stopping needs n_max, the number of examples in the complete run")
    if n == n_max:
        ci = score_interval(n, lost, gained, confidence)
        delta = 100 * (gained - lost) / n
        return decide(delta, ci, max_drop=max_drop, min_gain=min_gain, strict=strict, confidence=confidence)[0]
    cs = _FiniteCS(lost, gained, n, n_max, confidence)
    if not strict:
        # Verdict as a function of the integer full-run difference D = G - L: pass iff D >= D*.
        dlo, dhi = cs.domain(1)
        if _measured_ok(dlo, n_max, max_drop, min_gain):
            return "pass"  # deterministic: even if every remaining example is lost
        if not _measured_ok(dhi, n_max, max_drop, min_gain):
            return "fail"  # deterministic: even if every remaining example is gained
        d_star = _first_passing_diff(dlo, dhi, n_max, max_drop, min_gain)
        # The set's projection on D is an integer interval (h(D) = max f on the line is concave).
        # Look at the two lines that straddle the verdict's boundary.
        below, _ = cs.line_max(1, d_star - 1)
        above, _ = cs.line_max(1, d_star)
        in_below, in_above = below > cs.thr, above > cs.thr
        if in_below and in_above:
            return None
        if in_below:
            return "fail"
        if in_above:
            return "pass"
        # Neither line is in the set, so it lies wholly on one side: the side h rises towards.
        if above > below:
            return "pass"
        if below > above:
            return "fail"
        return None
    return _strict_early_stop(cs, max_drop, min_gain, confidence)


def _first_passing_diff(dlo: int, dhi: int, size: int, max_drop: float | None, min_gain: float | None) -> int:
    """Smallest D in (dlo, dhi] that passes the default policy (``_measured_ok`` is monotone in D)."""
    lo, hi = dlo, dhi  # not ok at lo, ok at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _measured_ok(mid, size, max_drop, min_gain):
            hi = mid
        else:
            lo = mid
    return hi


def _strict_early_stop(cs: _FiniteCS, max_drop: float | None, min_gain: float | None, confidence: float) -> str | None:
    """Scan every integer composition in the confidence sequence; one outcome for all, or None."""
    thresholds = [t for t in ((-max_drop if max_drop is not None else None), min_gain) if t is not None]
    z = _z(confidence)
    big, l, z_count = cs.big, cs.l, cs.z
    seen: set[str] = set()
    glo, ghi = cs.extent(0)
    for big_g in range(glo, ghi + 1):
        value, x = cs.line_max(0, big_g)
        if value <= cs.thr:
            continue
        top = big - big_g - z_count  # largest L in the row's domain
        starts = [c for c in {math.floor(x), math.ceil(x)} if l <= c <= top]
        start = max(starts, key=lambda c: cs.f(c, big_g))
        if cs.f(start, big_g) <= cs.thr:
            continue
        for step in (1, -1):  # f is concave along the row: the members are contiguous
            big_l = start if step == 1 else start - 1
            while l <= big_l <= top and cs.f(big_l, big_g) > cs.thr:
                seen.add(_strict_outcome(big, big_l, big_g, thresholds, z, confidence))
                if len(seen) > 1:
                    return None
                big_l += step
    return seen.pop() if len(seen) == 1 else None
