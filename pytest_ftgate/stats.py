"""Paired statistics for base-vs-tuned comparisons: intervals, McNemar, sample sizes, verdicts.

Pure functions. Standard library only; numpy is imported inside ``score_interval_array`` (the
vectorised twin of ``score_interval`` that simulations use) and nowhere else, so importing this
module stays cheap. No pytest.

Units: ``delta``, interval bounds, ``max_drop``, ``min_gain`` and drops are percentage points of
accuracy, tuned minus base. Flip rates are fractions of the examples (0-1): the share of
examples whose correctness changed, ``(lost + gained) / n``.

Why a score interval (Tango 1998) for the difference of paired accuracies
-------------------------------------------------------------------------
Base and tuned answer the same examples, so only the discordant pairs (``lost``: base right,
tuned wrong; ``gained``: the reverse) carry information about the difference. The interval is
Tango's asymptotic score interval for the difference of paired proportions (Tango, Stat Med
1998; recommended by Newcombe 1998 and Fagerland, Lydersen & Laake 2014): it inverts the score
test of ``delta = d0`` with the nuisance parameter at its restricted maximum-likelihood value.
Reasons for it over the alternatives:

* Coverage stays close to nominal down to a handful of discordant pairs (checked by simulation in
  ``tests/test_stats.py`` and ``benchmarks/simulate_verdicts.py``), where the paired Wald interval
  is too narrow and collapses to (0, 0) when nothing flipped. With zero flips the score interval
  is ``+-z^2/(n+z^2)``: it still says how large a change n examples could have hidden.
* It is deterministic (no bootstrap seed, no Monte Carlo error) and needs only the counts.
* At ``d0 = 0`` the statistic is the McNemar statistic ``(gained - lost) / sqrt(gained + lost)``,
  so the interval excludes 0 exactly when the asymptotic McNemar test rejects.
* Bounds never leave [-100, 100] and always contain the observed difference.

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
    "examples_needed",
    "macro_f1",
    "macro_f1_interval",
    "mcnemar_exact",
    "minimal_detectable_drop",
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
    """Tango's score statistic for H0: p_gained - p_lost = d (a fraction). Decreasing in d."""
    w = (2 * n - gained + lost) * d - (gained + lost)
    x = 8 * n * lost * d * (1 - d)
    s = math.sqrt(max(w * w + x, 0.0))
    # restricted MLE of p_lost; the second form avoids cancellation when w > 0
    q = (s - w) / (4 * n) if w <= 0 else 2 * lost * d * (1 - d) / (s + w)
    var = n * (2 * q + d * (1 - d))
    num = gained - lost - n * d
    if var <= 0.0:
        return math.copysign(math.inf, num) if num else 0.0
    return num / math.sqrt(var)


def score_interval(
    n: float, lost: float, gained: float, confidence: float = 0.95
) -> tuple[float, float]:
    """Tango score interval for ``(gained - lost) / n``, in points. Counts may be non-integer.

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

    Tango's score interval (see the module docstring for why): deterministic, near-nominal
    coverage at small discordance, non-zero width when nothing flipped, within [-100, 100].
    """
    return score_interval(*paired_counts(base, tuned), confidence=confidence)


def score_interval_array(n: Any, lost: Any, gained: Any, confidence: float = 0.95) -> tuple[Any, Any]:
    """Vectorised ``score_interval`` (numpy arrays in, ``(lower, upper)`` arrays in points out).

    The same statistic and the same bisection as the scalar function, for simulations.
    """
    import numpy as np

    z = _z(confidence)
    n, c, b = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (n, lost, gained)))
    if np.any((c < 0) | (b < 0) | (b + c > n)):
        raise ValueError("need 0 <= lost, gained and lost + gained <= n")
    empty = n == 0
    nn = np.where(empty, 1.0, n)

    def stat(d: Any) -> Any:
        w = (2 * nn - b + c) * d - (b + c)
        x = 8 * nn * c * d * (1 - d)
        s = np.sqrt(np.maximum(w * w + x, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(w <= 0, (s - w) / (4 * nn), 2 * c * d * (1 - d) / (s + w))
            var = nn * (2 * q + d * (1 - d))
            num = b - c - nn * d
            out = num / np.sqrt(np.where(var > 0, var, 1.0))
        degenerate = np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0))
        return np.where(var > 0, out, degenerate)

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
