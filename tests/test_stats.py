"""pytest_ftgate.stats: McNemar, the paired (skewness-corrected) score interval, sample sizes,
verdicts; and the vectorised twin the simulation scripts use (benchmarks/stats_arrays.py)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import pytest

from pytest_ftgate import stats
from pytest_ftgate.stats import paired

np = pytest.importorskip("numpy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stats_arrays import score_interval_array  # noqa: E402

Z95 = NormalDist().inv_cdf(0.975)


def outcomes(n: int, lost: int, gained: int) -> tuple[list[bool], list[bool]]:
    """Per-example correctness with the given discordant counts (the rest: both right)."""
    base = [True] * lost + [False] * gained + [True] * (n - lost - gained)
    tuned = [False] * lost + [True] * gained + [True] * (n - lost - gained)
    return base, tuned


def exact_coverage(n: int, flip_rate: float, drop: float, confidence: float = 0.95) -> float:
    """Coverage of the SCAS interval summed over all (lost, gained) tables: no Monte Carlo error."""
    d = drop / 100
    p_lost, p_gained = (flip_rate + d) / 2, (flip_rate - d) / 2

    def span(p: float):  # every count with non-negligible probability
        sd = math.sqrt(n * p * (1 - p))
        return np.arange(max(0, int(n * p - 12 * sd - 2)), min(n, int(n * p + 12 * sd + 2)) + 1)

    lost, gained = np.meshgrid(span(p_lost), span(p_gained), indexing="ij")
    keep = (lost + gained <= n) & ((gained == 0) | (p_gained > 0))
    lost, gained = lost[keep], gained[keep]
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = (
            log_fact[n] - log_fact[lost] - log_fact[gained] - log_fact[n - lost - gained]
            + lost * math.log(p_lost)
            + np.where(gained > 0, gained * math.log(max(p_gained, 1e-300)), 0.0)
            + (n - lost - gained) * math.log(1 - flip_rate)
        )
    p = np.exp(logp)
    low, high = score_interval_array(n, lost, gained, confidence)
    return float(p[(low <= -drop) & (-drop <= high)].sum())


# --- import hygiene --------------------------------------------------------------------------


def test_stats_package_imports_neither_numpy_nor_pytest():
    code = (
        "import sys\n"
        "import pytest_ftgate.stats\n"
        "print(sorted({'numpy', 'pytest', 'scipy'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- McNemar ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lost,gained",
    [(0, 0), (1, 0), (0, 1), (5, 5), (3, 10), (10, 3), (0, 25), (6, 7), (312, 37), (700, 800), (1, 60)],
)
def test_mcnemar_matches_scipy_binomtest(lost, gained):
    scipy_stats = pytest.importorskip("scipy.stats")
    m = lost + gained
    expected = 1.0 if m == 0 else scipy_stats.binomtest(lost, m, 0.5).pvalue
    assert stats.mcnemar_exact(lost, gained) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_large_counts_use_log_space_and_still_match():
    scipy_stats = pytest.importorskip("scipy.stats")
    lost, gained = 12_000, 12_500  # m > 20,000: the log-space branch
    expected = scipy_stats.binomtest(lost, lost + gained, 0.5).pvalue
    assert stats.mcnemar_exact(lost, gained) == pytest.approx(expected, rel=1e-6)


def test_mcnemar_is_symmetric_bounded_and_validates():
    for lost in range(12):
        for gained in range(12):
            p = stats.mcnemar_exact(lost, gained)
            assert 0.0 < p <= 1.0
            assert p == stats.mcnemar_exact(gained, lost)
    assert stats.mcnemar_exact(3, 3) == 1.0
    assert stats.mcnemar_exact(0, 10) == pytest.approx(2 / 2**10)
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 3)


# --- counts and the interval -----------------------------------------------------------------


def test_paired_counts():
    assert stats.paired_counts([True, True, False, False], [True, False, True, False]) == (4, 1, 1)
    assert stats.paired_counts(*outcomes(970, 312, 37)) == (970, 312, 37)
    assert stats.paired_counts([], []) == (0, 0, 0)
    with pytest.raises(ValueError, match="same examples"):
        stats.paired_counts([True], [True, False])


@pytest.mark.parametrize("n,lost,gained", [(500, 30, 20), (200, 10, 0), (44, 1, 0), (970, 312, 37), (60, 9, 2)])
def test_interval_is_skewness_corrected_tango_score_interval(n, lost, gained):
    """Independent check of the SCAS bounds: the restricted MLE found numerically, the variance and
    skewness summed over one pair's three outcomes, and each bound the root of Tango's statistic
    minus its Cornish-Fisher-corrected critical value, +-z + gamma (z^2 - 1) / 6."""
    optimize = pytest.importorskip("scipy.optimize")

    def excess(d: float, side: int, skew: bool = True) -> float:
        def nll(q: float) -> float:  # q = P(lost); P(gained) = q + d
            terms = [(gained, q + d), (lost, q), (n - lost - gained, 1 - 2 * q - d)]
            return -sum(k * math.log(max(p, 1e-300)) for k, p in terms if k)

        q = optimize.minimize_scalar(
            nll, bounds=(max(0.0, -d) + 1e-15, (1 - d) / 2 - 1e-15), method="bounded",
            options={"xatol": 1e-14},
        ).x
        pair = {+1: q + d, -1: q, 0: 1 - 2 * q - d}  # gained-minus-lost indicator of one pair
        var = sum(p * (x - d) ** 2 for x, p in pair.items())
        gamma = sum(p * (x - d) ** 3 for x, p in pair.items()) / (math.sqrt(n) * var**1.5)
        score = (gained - lost - n * d) / math.sqrt(n * var)
        return score - (side * Z95 + skew * gamma * (Z95**2 - 1) / 6)

    d_hat = (gained - lost) / n
    low = optimize.brentq(lambda d: excess(d, +1), -0.999999, d_hat - 1e-12, xtol=1e-13)
    high = optimize.brentq(lambda d: excess(d, -1), d_hat + 1e-12, 0.999999, xtol=1e-13)
    got = stats.paired_diff_interval(*outcomes(n, lost, gained))
    assert got == pytest.approx((100 * low, 100 * high), abs=1e-4)
    # the correction moves both bounds away from Tango's (the uncorrected cut at +-z)
    tango_low = optimize.brentq(lambda d: excess(d, +1, skew=False), -0.999999, d_hat - 1e-12, xtol=1e-13)
    tango_high = optimize.brentq(lambda d: excess(d, -1, skew=False), d_hat + 1e-12, 0.999999, xtol=1e-13)
    assert abs(got[0] - 100 * tango_low) > 1e-3 and abs(got[1] - 100 * tango_high) > 1e-3


def test_interval_regression_values():
    # Tango's uncorrected interval: (-4.89576, 0.79807), (-31.69527, -25.03622), (-8.96, -2.74)
    assert stats.score_interval(500, 30, 20) == pytest.approx((-4.86549, 0.79274), abs=1e-5)
    assert stats.score_interval(970, 312, 37) == pytest.approx((-31.69240, -25.03159), abs=1e-5)
    assert stats.score_interval(200, 10, 0) == pytest.approx((-8.71310, -2.57875), abs=1e-5)


def test_zero_discordance_keeps_a_nonzero_symmetric_width():
    """No flips: p_lost = 0 above 0 (p_gained = 0 below), so a pair's indicator is Bernoulli(h) and
    the half-width h solves n h = z sqrt(n h (1 - h)) - (z^2 - 1)(1 - 2 h) / 6: about 2.8 / n."""
    for n in (1, 10, 200, 500, 1490):
        low, high = stats.paired_diff_interval(*outcomes(n, 0, 0))
        assert low == pytest.approx(-high, rel=1e-12) and high > 0
        h = high / 100
        assert n * h == pytest.approx(Z95 * math.sqrt(n * h * (1 - h)) - (Z95**2 - 1) * (1 - 2 * h) / 6, rel=1e-9)
        if n >= 10:
            assert h < Z95**2 / (n + Z95**2)  # narrower than Tango's +-z^2/(n+z^2)
        if n >= 200:
            assert 2.78 < n * h < 2.82
    # 500 unchanged examples still leave room for a +-0.56-point change
    assert stats.score_interval(500, 0, 0)[1] == pytest.approx(0.561, abs=1e-3)


def test_edge_cases_all_lost_all_gained_one_and_no_examples():
    low, high = stats.paired_diff_interval(*outcomes(10, 10, 0))
    assert low == -100.0 and -100 < high < -40
    low, high = stats.paired_diff_interval(*outcomes(10, 0, 10))
    assert high == 100.0 and 40 < low < 100
    assert stats.paired_diff_interval([True], [False])[0] == -100.0
    assert stats.paired_diff_interval([False], [True])[1] == 100.0
    low, high = stats.paired_diff_interval([True], [True])
    assert -100 < low < 0 < high < 100
    assert stats.paired_diff_interval([], []) == (-100.0, 100.0)
    with pytest.raises(ValueError):
        stats.paired_diff_interval([True], [True], confidence=1.0)
    with pytest.raises(ValueError):
        stats.score_interval(10, 8, 5)


def test_interval_contains_estimate_and_stays_in_range_for_every_small_table():
    for n in range(1, 13):
        for lost in range(n + 1):
            for gained in range(n + 1 - lost):
                low, high = stats.score_interval(n, lost, gained)
                est = 100 * (gained - lost) / n
                assert -100 <= low <= est <= high <= 100
                assert high - low > 0


def test_interval_monotone_in_counts_sample_size_and_confidence():
    n = 60
    for total in range(0, n + 1, 7):  # one more loss instead of a gain moves both bounds down
        bounds = [stats.score_interval(n, lost, total - lost) for lost in range(total + 1)]
        for (l1, h1), (l2, h2) in zip(bounds, bounds[1:]):
            assert l2 < l1 and h2 < h1
    widths = [np.subtract(*stats.score_interval(k * 100, k * 8, k * 4)[::-1]) for k in (1, 2, 5, 10, 20)]
    assert all(a > b for a, b in zip(widths, widths[1:]))
    w90, w95, w99 = (np.subtract(*stats.score_interval(500, 30, 20, c)[::-1]) for c in (0.9, 0.95, 0.99))
    assert w90 < w95 < w99


def test_interval_excludes_zero_exactly_when_asymptotic_mcnemar_rejects():
    for lost in range(41):
        for gained in range(41):
            if lost + gained == 0:
                continue
            z = abs(gained - lost) / math.sqrt(gained + lost)
            if abs(z - Z95) < 1e-6:
                continue
            low, high = stats.score_interval(200, lost, gained)
            assert (low > 0 or high < 0) == (z > Z95), (lost, gained)


def test_array_version_matches_scalar():
    rng = np.random.default_rng(1)
    n = rng.integers(1, 400, size=300)
    lost = rng.binomial(n, 0.08)
    gained = rng.binomial(n - lost, 0.05)
    low, high = score_interval_array(n, lost, gained, 0.9)
    for i in range(300):
        assert (low[i], high[i]) == pytest.approx(stats.score_interval(n[i], lost[i], gained[i], 0.9), abs=1e-9)
    assert score_interval_array(0, 0, 0)[0] == -100.0


def test_coverage_by_simulation_n500_flip10():
    rng = np.random.default_rng(20261129)
    n, f, drop = 500, 0.10, 2.0
    p_lost, p_gained = (f + drop / 100) / 2, (f - drop / 100) / 2
    hits = 0
    for _ in range(2000):
        lost = int(rng.binomial(n, p_lost))
        gained = int(rng.binomial(n - lost, p_gained / (1 - p_lost)))
        low, high = stats.paired_diff_interval(*outcomes(n, lost, gained))
        hits += low <= -drop <= high
    assert 0.935 <= hits / 2000 <= 0.965


@pytest.mark.parametrize(
    "n,flip_rate,drop", [(200, 0.05, 0.0), (200, 0.05, 1.0), (200, 0.10, 3.0), (500, 0.05, 4.0), (1490, 0.02, 1.0)]
)
def test_exact_coverage_at_small_discordance(n, flip_rate, drop):
    """Down to ~10 discordant pairs the coverage stays within 1.5 points of 95%."""
    assert 0.935 <= exact_coverage(n, flip_rate, drop) <= 0.965


@pytest.mark.parametrize("n,drop", [(200, 5.0), (500, 5.0), (970, 5.0), (1490, 5.0), (200, 4.0)])
def test_exact_coverage_within_a_point_where_the_flips_are_lopsided(n, drop):
    """5% flips and a true drop of 5 points: every flip is a loss. Tango's unskewed interval covered
    96.7% at n = 200 (and 94.3% at n = 1490); n = 200 with a drop of 4 is the skewness-corrected
    interval's lowest cell of the simulation grid (94.1%). benchmarks/simulate_verdicts.py checks
    every cell of the grid."""
    assert 0.94 <= exact_coverage(n, 0.05, drop) <= 0.96


def test_statistic_settles_the_bounds_without_computing_them():
    """low >= t exactly when the statistic at t is >= z; high < t exactly when it is < -z (the
    strict early-stopping shortcut compares the statistic with +-z instead of bisecting)."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        n = int(rng.integers(1, 2000))
        lost = int(rng.binomial(n, rng.uniform(0, 0.3)))
        gained = int(rng.binomial(n - lost, rng.uniform(0, 0.3)))
        low, high = stats.score_interval(n, lost, gained)
        for t in [*rng.uniform(-30, 30, size=4), low - 1e-6, low + 1e-6, high - 1e-6, high + 1e-6]:
            if not -100 < t < 100:
                continue
            s = paired._tango_z(n, lost, gained, t / 100)
            assert (low >= t) == (s >= Z95), (n, lost, gained, t)
            assert (high < t) == (s < -Z95), (n, lost, gained, t)


def test_paired_wald_interval_would_collapse_where_the_score_interval_does_not():
    # the placeholder's Wald interval returned (0, 0) for no flips; this one never has zero width
    low, high = stats.score_interval(970, 0, 0)
    assert high - low > 0.55


# --- sample sizes ----------------------------------------------------------------------------


def test_minimal_detectable_drop_solves_its_equation_and_is_monotone():
    n, f = 970, 0.10
    d = stats.minimal_detectable_drop(n, f) / 100
    zb = NormalDist().inv_cdf(0.8)
    assert d * math.sqrt(n) == pytest.approx(Z95 * math.sqrt(f) + zb * math.sqrt(f - d * d), rel=1e-9)
    assert 2.7 < 100 * d < 3.0
    by_n = [stats.minimal_detectable_drop(k, f) for k in (200, 500, 970, 1490, 10_000)]
    assert all(a > b for a, b in zip(by_n, by_n[1:]))
    by_f = [stats.minimal_detectable_drop(n, k) for k in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(by_f, by_f[1:]))
    assert stats.minimal_detectable_drop(n, f, confidence=0.99) > stats.minimal_detectable_drop(n, f)
    assert stats.minimal_detectable_drop(n, f, power=0.9) > stats.minimal_detectable_drop(n, f)
    assert stats.minimal_detectable_drop(0, 0.1) == math.inf
    assert stats.minimal_detectable_drop(100, 0.0) == math.inf
    assert stats.minimal_detectable_drop(20, 0.02) == math.inf  # even "every flip lost" is not detectable
    with pytest.raises(ValueError):
        stats.minimal_detectable_drop(100, 10.0)  # a flip rate is a fraction, not points


def test_minimal_detectable_drop_has_the_promised_power():
    rng = np.random.default_rng(7)
    n, f = 500, 0.10
    d = stats.minimal_detectable_drop(n, f) / 100
    lost = rng.binomial(n, (f + d) / 2, size=20_000)
    gained = rng.binomial(n - lost, ((f - d) / 2) / (1 - (f + d) / 2))
    z = (lost - gained) / np.sqrt(np.maximum(lost + gained, 1))
    assert 0.77 <= np.mean(z > Z95) <= 0.83


def test_examples_needed_settles_exactly_at_the_returned_size():
    for delta, f, margin, gain in [(-1.0, 0.10, 2.0, False), (-3.0, 0.10, 2.0, False), (3.5, 0.2, 2.0, True),
                                   (0.0, 0.0, 2.0, False), (-0.5, 0.05, 1.0, False)]:
        need = stats.examples_needed(delta, f, margin, gain=gain)
        threshold = margin if gain else -margin

        def settled(size: int) -> bool:
            low, high = stats.score_interval(size, size * (f - delta / 100) / 2, size * (f + delta / 100) / 2)
            return low >= threshold if delta > threshold else high < threshold

        assert need is not None and settled(need) and not settled(need - 1)


def test_examples_needed_sanity():
    # about z^2 (f - d^2) / (d - threshold)^2
    need = stats.examples_needed(-1.0, 0.10, 2.0)
    assert 3_400 < need < 4_300
    # further from the margin: fewer examples; more churn: more examples
    assert stats.examples_needed(0.0, 0.10, 2.0) < need
    assert stats.examples_needed(-1.0, 0.20, 2.0) > need
    assert stats.examples_needed(-5.0, 0.10, 2.0) < stats.examples_needed(-3.0, 0.10, 2.0)
    # no flips at all: the half-width (about 2.8 / n) must fit inside 2 points: n = 140
    assert stats.examples_needed(0.0, 0.0, 2.0) == 140
    assert stats.score_interval(139, 0, 0)[0] < -2.0 <= stats.score_interval(140, 0, 0)[0]
    # a bigger sample narrows the interval: at the returned size it is narrower than at 970
    big = stats.score_interval(need, need * 0.055, need * 0.045)
    small = stats.score_interval(970, 970 * 0.055, 970 * 0.045)
    assert big[1] - big[0] < small[1] - small[0] and big[0] >= -2.0 > small[0]
    # on the margin nothing settles it
    assert stats.examples_needed(-2.0, 0.10, 2.0) is None
    assert stats.examples_needed(2.0, 0.10, 2.0, gain=True) is None
    assert stats.examples_needed(-2.0 + 1e-12, 0.10, 2.0) is None


# --- decide ----------------------------------------------------------------------------------

DEFAULT = [
    # delta, ci, outcome, note?   (max_drop = 2)
    (-1.0, (-1.5, -0.5), "pass", False),
    (-1.0, (-3.0, 1.0), "pass", True),  # measured within the margin, interval cannot support it
    (-3.0, (-4.0, -2.5), "fail", False),
    (-3.0, (-5.0, 0.5), "fail", True),
    (-2.0, (-3.0, -1.0), "pass", True),  # exactly the allowed drop is allowed
    (75.8 - 77.8, (-2.5, -1.5), "pass", True),  # float noise: -2.0000000000000027
    (4.0, (3.0, 5.0), "pass", False),
]
STRICT = [
    (-1.0, (-1.5, -0.5), "pass", ""),
    (-1.0, (-2.0, 0.5), "pass", ""),  # lower bound exactly on the margin proves it
    (-1.0, (-3.0, 1.0), "inconclusive", " Inconclusive: the interval reaches -3.0, below the -2.0 margin."),
    (-1.0, (-2.04, 0.5), "inconclusive", " Inconclusive: the interval reaches -2.04, below the -2.0 margin."),
    (-3.0, (-5.0, 0.5), "inconclusive", " Inconclusive: the interval (-5.0, +0.5) crosses the -2.0 margin."),
    (-3.0, (-4.0, -2.0), "inconclusive", " Inconclusive: the interval (-4.0, -2.0) crosses the -2.0 margin."),
    (-3.0, (-4.0, -2.5), "fail", ""),
    (-2.5, (-3.1, -2.01), "fail", ""),
]


@pytest.mark.parametrize("delta,ci,outcome,note", DEFAULT)
def test_decide_default_policy(delta, ci, outcome, note):
    got, why = stats.decide(delta, ci, max_drop=2.0)
    assert got == outcome
    if note:
        assert why.startswith(" The sample cannot support this verdict: the interval (")
        assert "crosses the -2.0 margin." in why
    else:
        assert why == ""


@pytest.mark.parametrize("delta,ci,outcome,why", STRICT)
def test_decide_strict_policy(delta, ci, outcome, why):
    assert stats.decide(delta, ci, max_drop=2.0, strict=True) == (outcome, why)


@pytest.mark.parametrize(
    "delta,ci,default,strict",
    [
        (3.0, (2.5, 3.5), "pass", "pass"),
        (3.0, (1.0, 5.0), "pass", "inconclusive"),
        (1.0, (-1.0, 3.0), "fail", "inconclusive"),
        (1.0, (0.0, 1.5), "fail", "fail"),
        (2.0, (1.0, 3.0), "pass", "inconclusive"),
    ],
)
def test_decide_min_gain(delta, ci, default, strict):
    assert stats.decide(delta, ci, min_gain=2.0)[0] == default
    outcome, why = stats.decide(delta, ci, min_gain=2.0, strict=True)
    assert outcome == strict
    if strict == "inconclusive":
        assert "+2.0 required gain" in why


def test_decide_both_thresholds_and_none():
    assert stats.decide(1.0, (-3.0, 5.0)) == ("pass", "")
    # default: the gain rule fails even though the drop rule passes
    assert stats.decide(1.0, (0.5, 1.5), max_drop=2.0, min_gain=2.0) == ("fail", "")
    # strict: one proven failure fails; the other unsettled threshold is still mentioned
    outcome, why = stats.decide(1.0, (-3.0, 1.5), max_drop=2.0, min_gain=2.0, strict=True)
    assert outcome == "fail" and why.startswith(" Also unsettled: the interval reaches -3.0")
    outcome, why = stats.decide(1.0, (-3.0, 3.0), max_drop=2.0, min_gain=2.0, strict=True)
    assert outcome == "inconclusive"
    assert why == (
        " Inconclusive: the interval reaches -3.0, below the -2.0 margin."
        " The interval (-3.0, +3.0) crosses the +2.0 required gain."
    )


def test_decide_says_how_many_examples_would_settle_it():
    n, lost, gained = 970, 58, 49
    base, tuned = outcomes(n, lost, gained)
    ci = stats.paired_diff_interval(base, tuned)
    delta = 100 * (gained - lost) / n
    flip = (lost + gained) / n
    outcome, why = stats.decide(delta, ci, max_drop=2.0, strict=True, n=n, flip_rate=flip)
    assert outcome == "inconclusive"
    match = re.search(r"; about ([\d,]+) examples would settle it\.$", why)
    assert match, why
    shown = int(match.group(1).replace(",", ""))
    need = stats.examples_needed(delta, flip, 2.0)
    assert shown >= need > n and shown < need * 1.1
    _, why = stats.decide(delta, ci, max_drop=2.0, n=n, flip_rate=flip)
    assert why.startswith(" The sample cannot support this verdict") and "examples would settle it." in why
    _, why = stats.decide(-2.0, (-4.0, 0.0), max_drop=2.0, strict=True, n=n, flip_rate=flip)
    assert "no sample size would settle it" in why


def test_comparison_uses_the_score_interval_and_decide():
    from pytest_ftgate.results import EvalResult, ModelInfo, Prediction, compare

    def result(label: str, correct: list[bool]) -> EvalResult:
        preds = [Prediction(str(i), "x", "x", "x", ok) for i, ok in enumerate(correct)]
        score = 100 * sum(correct) / len(correct)
        return EvalResult("fpb", ModelInfo(label, label * 3), len(correct), score, {"accuracy": score}, preds, 0.0)

    base, tuned = outcomes(970, 312, 37)
    comparison = compare(result("base", base), result("tuned", tuned))
    assert comparison.ci == pytest.approx(stats.score_interval(970, 312, 37))
    assert comparison.verdict(max_drop=2.0).outcome == "fail"
    assert comparison.verdict(max_drop=2.0, strict=True).outcome == "fail"
    base, tuned = outcomes(200, 6, 4)
    comparison = compare(result("base", base), result("tuned", tuned))
    assert comparison.verdict(max_drop=2.0).outcome == "pass"
    verdict = comparison.verdict(max_drop=2.0, strict=True)
    assert verdict.outcome == "inconclusive" and "Inconclusive: the interval reaches" in verdict.reason
