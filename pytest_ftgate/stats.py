"""Paired statistics for base-vs-tuned comparisons: intervals, McNemar, sample sizes, verdicts.

Pure functions. Standard library only; numpy is imported inside ``score_interval_array`` and
``early_stop_decision_array`` (the vectorised twins that simulations use) and nowhere else, so
importing this module stays cheap. No pytest.

Units: ``delta``, interval bounds, ``max_drop``, ``min_gain`` and drops are percentage points of
accuracy, tuned minus base. Flip rates are fractions of the examples (0-1): the share of
examples whose correctness changed, ``(lost + gained) / n``.

Why a skewness-corrected score interval for the difference of paired accuracies
-------------------------------------------------------------------------------
Base and tuned answer the same examples, so only the discordant pairs (``lost``: base right,
tuned wrong; ``gained``: the reverse) carry information about the difference. The interval is
Tango's asymptotic score interval for the difference of paired proportions (Tango, Stat Med
1998; recommended by Newcombe 1998 and Fagerland, Lydersen & Laake 2014) with a skewness
correction: the "SCAS" method (skewness-corrected asymptotic score; Gart & Nam 1988, Laud,
Pharm Stat 2017; for paired data Laud's ``ratesci::pairbinci``, which also multiplies the
variance by N/(N-1), a factor left out here). Tango's interval inverts the score test of
``delta = d0`` with the nuisance parameter at its restricted maximum-likelihood value and cuts at
``+-z``; SCAS cuts the same statistic at ``+-z + gamma (z^2 - 1) / 6`` (a Cornish-Fisher term),
``gamma`` being the skewness of the observed difference under that fit. Tango's symmetric cut
overshoots when the discordant pairs are few and lopsided (about 10 flips in 200 examples, all
of them losses: 96.7% coverage). Reasons for it over the alternatives:

* Exact coverage (summed over all tables: no Monte Carlo error) is 94.1-95.7% across the grid of
  ``benchmarks/simulate_verdicts.py`` (n = 200-1490, 5-20% flips, true drops 0-5 points), at
  about Tango's width (0.8% narrower on average). Tango's own range there is 94.3-96.7%; Newcombe's
  hybrid score, the Agresti-Min and Bonett-Price adjusted Wald intervals, MOVER-Jeffreys and the
  exact unconditional interval each leave 94-96% in some cell. The paired Wald interval is too
  narrow with few discordant pairs and collapses to (0, 0) when nothing flipped.
* With zero flips the interval is symmetric, about ``+-2.8/n`` (+-0.56 points at n = 500;
  Tango's ``+-z^2/(n+z^2)``, +-0.76): it still says how large a change n examples could hide.
* It is deterministic (no bootstrap seed, no Monte Carlo error) and needs only the counts.
* At ``d0 = 0`` the skewness vanishes and the statistic is the McNemar statistic
  ``(gained - lost) / sqrt(gained + lost)``, so the interval excludes 0 exactly when the
  asymptotic McNemar test rejects.
* Bounds never leave [-100, 100] and contain the observed difference (at any confidence of
  68.3% or more, i.e. z >= 1).

Non-accuracy metrics (macro F1) have no such closed form; ``bootstrap_interval`` resamples the
examples jointly (paired percentile bootstrap with a fixed seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from statistics import NormalDist
from typing import Any

__all__ = [
    "bootstrap_interval",
    "decide",
    "early_stop_decision",
    "early_stop_decision_array",
    "examples_needed",
    "macro_f1",
    "macro_f1_interval",
    "mcnemar_exact",
    "minimal_detectable_drop",
    "paired_confidence_sequence",
    "paired_counts",
    "paired_diff_interval",
    "score_interval",
    "score_interval_array",
]

_BISECT_STEPS = 64  # halvings of a width-2 bracket: far below double precision
_EPS = 1e-9  # points; absorbs float noise such as 75.8 - 77.8 == -2.0000000000000027


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


# --- counts and the accuracy interval --------------------------------------------------------


def paired_counts(base: Sequence[bool], tuned: Sequence[bool]) -> tuple[int, int, int]:
    """``(n, lost, gained)`` from per-example correctness of base and tuned, in the same order."""
    if len(base) != len(tuned):
        raise ValueError(
            f"paired outcomes need the same examples: base has {len(base)}, tuned has {len(tuned)}"
        )
    lost = gained = 0
    for b, t in zip(base, tuned):
        if b and not t:
            lost += 1
        elif t and not b:
            gained += 1
    return len(base), lost, gained


def _tango_z(n: float, lost: float, gained: float, d: float) -> float:
    """Skewness-corrected Tango score statistic for H0: p_gained - p_lost = d (a fraction).

    ``score_interval``'s bounds are where it equals ``+-z``: it is above ``+z`` below the lower
    bound and below ``-z`` above the upper bound, so callers may compare it with ``+-z`` instead
    of computing the interval (early stopping does). At ``d = 0`` it is the McNemar statistic.

    With Tango's statistic ``T`` (restricted MLE of the nuisance parameter) and ``a = gamma / 6``
    for the skewness ``gamma`` of the observed difference under that fit, it returns the root
    ``s`` of ``s + a (s^2 - 1) = T`` that tends to ``T`` as ``a -> 0`` (the parabola's vertex
    ``-1 / (2 a)`` when there is no root), so that ``s = +-z`` exactly where
    ``T = +-z + a (z^2 - 1)``.
    """
    w = (2 * n - gained + lost) * d - (gained + lost)
    x = 8 * n * lost * d * (1 - d)
    s = math.sqrt(max(w * w + x, 0.0))
    # restricted MLE of p_lost; the second form avoids cancellation when w > 0
    q = (s - w) / (4 * n) if w <= 0 else 2 * lost * d * (1 - d) / (s + w)
    var = 2 * q + d * (1 - d)  # variance of one pair's (gained - lost) indicator difference
    num = gained - lost - n * d
    if var <= 0.0:
        return math.copysign(math.inf, num) if num else 0.0
    root_nv = math.sqrt(n * var)
    score = num / root_nv
    mu3 = d * ((1 - d) * (1 - 2 * d) - 6 * q)  # its third central moment: d - 3 d (2 q + d) + 2 d^3
    a = mu3 / (6 * root_nv * var)  # gamma / 6, gamma = mu3 / (sqrt(n) var^1.5)
    disc = 1 + 4 * a * (score + a)
    if disc <= 0.0:
        return -1 / (2 * a)
    return 2 * (score + a) / (1 + math.sqrt(disc))  # (sqrt(disc) - 1) / (2 a), without cancellation


def score_interval(
    n: float, lost: float, gained: float, confidence: float = 0.95
) -> tuple[float, float]:
    """Skewness-corrected Tango score interval (SCAS) for ``(gained - lost) / n``, in points.

    Counts may be non-integer.

    ``n == 0`` gives ``(-100.0, 100.0)``: no examples, no information.
    """
    z = _z(confidence)
    if lost < 0 or gained < 0 or lost + gained > n:
        raise ValueError(f"need 0 <= lost, gained and lost + gained <= n; got {n=}, {lost=}, {gained=}")
    if n == 0:
        return (-100.0, 100.0)
    d_hat = (gained - lost) / n
    lo, hi = -1.0, d_hat  # lower bound: Z(L) = +z
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if _tango_z(n, lost, gained, mid) > z:
            lo = mid
        else:
            hi = mid
    lower = (lo + hi) / 2
    lo, hi = d_hat, 1.0  # upper bound: Z(U) = -z
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if _tango_z(n, lost, gained, mid) < -z:
            hi = mid
        else:
            lo = mid
    upper = (lo + hi) / 2
    return (100 * lower, 100 * upper)


def paired_diff_interval(
    base: Sequence[bool], tuned: Sequence[bool], confidence: float = 0.95
) -> tuple[float, float]:
    """Interval for accuracy(tuned) - accuracy(base), in points, from paired outcomes.

    Tango's score interval with a skewness correction (SCAS; see the module docstring for why):
    deterministic, near-nominal coverage at small discordance, non-zero width when nothing
    flipped, within [-100, 100].
    """
    return score_interval(*paired_counts(base, tuned), confidence=confidence)


def score_interval_array(n: Any, lost: Any, gained: Any, confidence: float = 0.95) -> tuple[Any, Any]:
    """Vectorised ``score_interval`` (numpy arrays in, ``(lower, upper)`` arrays in points out).

    The same statistic (``_tango_z``) and the same bisection as the scalar function, for
    simulations.
    """
    import numpy as np

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


# --- tests and sample sizes ------------------------------------------------------------------


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of ``lost`` vs ``gained`` discordant pairs.

    Twice the smaller tail of Binomial(lost + gained, 1/2), capped at 1. The null distribution is
    symmetric, so this equals the "minimum likelihood" two-sided p-value (scipy's ``binomtest``).
    """
    if lost < 0 or gained < 0:
        raise ValueError(f"counts must be non-negative, got {lost=}, {gained=}")
    m = lost + gained
    k = min(lost, gained)
    if m == 0 or 2 * k >= m:
        return 1.0
    if m <= 20_000:  # exact integer arithmetic
        term = total = 1
        for i in range(k):
            term = term * (m - i) // (i + 1)
            total += term
        return min(1.0, 2 * total / 2**m)
    # log space for very large counts: log-sum-exp over the lower tail
    logs = [math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) for i in range(k + 1)]
    top = max(logs)
    log_tail = top + math.log(math.fsum(math.exp(v - top) for v in logs)) - m * math.log(2)
    return min(1.0, 2 * math.exp(log_tail))


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


# --- non-accuracy metrics --------------------------------------------------------------------


def _quantile(sorted_values: Sequence[float], p: float) -> float:
    """Linear-interpolation quantile (numpy's default, Hyndman-Fan type 7)."""
    h = (len(sorted_values) - 1) * p
    i = math.floor(h)
    j = min(i + 1, len(sorted_values) - 1)
    return sorted_values[i] + (h - i) * (sorted_values[j] - sorted_values[i])


def bootstrap_interval(
    base_values: Sequence[Any],
    tuned_values: Sequence[Any],
    metric: Callable[[Sequence[Any]], float],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired percentile bootstrap interval for ``metric(tuned) - metric(base)``.

    Each replicate draws n example indices with replacement and applies them to both lists, so
    the pairing is kept. ``metric`` receives a list of items (e.g. ``(gold, predicted)`` pairs)
    and returns a number; the interval is in the metric's units. Deterministic for a given
    ``seed`` (``random.Random``).
    """
    import random

    n = len(base_values)
    if len(tuned_values) != n:
        raise ValueError(
            f"paired values need the same examples: base has {n}, tuned has {len(tuned_values)}"
        )
    if n == 0:
        raise ValueError("cannot bootstrap a metric over zero examples")
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    _z(confidence)
    rng = random.Random(seed)
    population = range(n)
    diffs = []
    for _ in range(n_boot):
        idx = rng.choices(population, k=n)
        diffs.append(metric([tuned_values[i] for i in idx]) - metric([base_values[i] for i in idx]))
    diffs.sort()
    alpha = (1 - confidence) / 2
    return (_quantile(diffs, alpha), _quantile(diffs, 1 - alpha))


def macro_f1(items: Sequence[tuple[Hashable, Hashable | None]]) -> float:
    """Macro-averaged F1 in points over ``(gold, predicted)`` pairs.

    Classes are the gold labels and the predicted labels present (scikit-learn's default); an
    unparsed prediction (``None``) counts against its gold class but is not a class itself.
    """
    tp: dict[Hashable, int] = {}
    fp: dict[Hashable, int] = {}
    fn: dict[Hashable, int] = {}
    for gold, pred in items:
        if pred == gold:
            tp[gold] = tp.get(gold, 0) + 1
        else:
            fn[gold] = fn.get(gold, 0) + 1
            if pred is not None:
                fp[pred] = fp.get(pred, 0) + 1
    labels = set(tp) | set(fp) | set(fn)
    if not labels:
        raise ValueError("macro F1 needs at least one example")
    scores = []
    for label in labels:
        t = tp.get(label, 0)
        scores.append(2 * t / (2 * t + fp.get(label, 0) + fn.get(label, 0)))
    return 100 * math.fsum(scores) / len(scores)


def macro_f1_interval(
    base_items: Sequence[tuple[Hashable, Hashable | None]],
    tuned_items: Sequence[tuple[Hashable, Hashable | None]],
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired bootstrap interval (points) for macro F1(tuned) - macro F1(base)."""
    return bootstrap_interval(base_items, tuned_items, macro_f1, confidence, n_boot, seed)


# --- verdicts --------------------------------------------------------------------------------


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


# --- sequential early stopping ---------------------------------------------------------------
#
# Why a prior-posterior-ratio confidence sequence over the benchmark's composition
# ---------------------------------------------------------------------------------
# Early stopping evaluates a uniformly shuffled benchmark of ``n_max`` examples in chunks. With
# every model answer fixed, the benchmark is a finite population of ``L`` lost, ``G`` gained and
# ``Z`` unchanged examples, and the first ``n`` examples are a sample without replacement from it.
# The quantity the gate cares about is the complete run's verdict, a function of ``(L, G)``.
#
# For a candidate composition theta = (L, G, Z) the probability of the observed ordered sequence
# depends only on the counts: ``P_theta = [L]_l [G]_g [Z]_z / [N]_n`` (falling factorials).
# Mixing over a Dirichlet-multinomial prior on the composition (shares ~ Dirichlet(a)) gives the
# Polya-urn probability ``m(l, g, z) = Gamma(A)/Gamma(A + n) * prod Gamma(a_i + k_i)/Gamma(a_i)``
# (``A = sum a``), the same for every N. Under the true composition ``M_n = m / P_theta`` is a
# non-negative supermartingale with ``M_0 = 1`` (a likelihood ratio of the mixture against the
# truth), so by Ville's inequality it ever reaches ``1/alpha`` with probability at most
# ``alpha``: the sets ``{theta : P_theta > alpha * m}`` form a confidence sequence, valid
# simultaneously over every n and for any (even data-dependent) choice of looks.
# This is the prior-posterior-ratio confidence sequence of Waudby-Smith & Ramdas, "Confidence
# sequences for sampling without replacement" (NeurIPS 2020), for three categories. Reasons:
#
# * It is exact for sampling without replacement: no asymptotics, no i.i.d. assumption (the only
#   randomness is the shuffle), and at ``n = n_max`` it collapses to the true composition, so the
#   early-stopped verdict can be compared with the complete run's, not with a model of it.
# * It depends on the counts only (not their order), which is all the runner has to pass.
# * It is a joint set for (L, G), so it bounds every function of them at once: the full-run delta
#   for ``max_drop`` and ``min_gain`` together, and the full-run Tango interval for ``strict``.
# * Its width is about 1.6-1.7x the fixed-n Tango interval over the first 40% of the benchmark
#   (the price of validity under continuous monitoring, as for any confidence sequence) and
#   drops below it after about 80%, thanks to the finite-population correction. Alternatives:
#   an alpha-spending schedule needs the looks fixed in advance (the runner's chunking may not
#   be) and a Bonferroni split over ~20 looks is as wide; betting sequences for bounded means
#   depend on the order of the outcomes, not just the counts; with-replacement sequences
#   (Howard et al.) never collapse at n_max.
#
# The prior only moves where the sequence is tightest (its validity holds for any prior):
# Dirichlet(1, 1, 8) on (lost, gained, unchanged) centres it on a 20% flip rate, symmetric
# between losses and gains; against a uniform prior it is 10-25% narrower at flip rates 5-20%.
# Computation uses the convex relaxation (real-valued L, G; ``log P_theta`` is concave there), so
# the reported sets contain the exact ones: still valid, at most a count wider.

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
    "sequential early stopping" notes above (prior-posterior-ratio confidence sequence for
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
    import numpy as np

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
