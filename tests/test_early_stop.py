"""Sequential early stopping: the anytime-valid confidence sequence and the stopping rule."""

from __future__ import annotations

import itertools
import math
import random
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from pytest_ftgate import stats
from pytest_ftgate.stats import sequential

np = pytest.importorskip("numpy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stats_arrays import early_stop_decision_array  # noqa: E402


def shuffled_counts(big_l: int, big_g: int, size: int, rng: random.Random) -> list[tuple[int, int]]:
    """Cumulative (lost, gained) after each example of one uniform shuffle of the benchmark."""
    codes = [1] * big_l + [2] * big_g + [0] * (size - big_l - big_g)
    rng.shuffle(codes)
    out, lost, gained = [], 0, 0
    for code in codes:
        lost += code == 1
        gained += code == 2
        out.append((lost, gained))
    return out


def rising(a: int, k: int) -> int:
    return math.prod(range(a, a + k))


def in_exact_cs(big_l: int, big_g: int, lost: int, gained: int, n: int, size: int, alpha: Fraction) -> bool:
    """Membership in the confidence sequence, independently and exactly, in integers:
    P_theta(sequence) = [L]_l [G]_g [Z]_z / [N]_n > alpha * Polya(1, 1, 8)(sequence)."""
    same, big_z = n - lost - gained, size - big_l - big_g
    if big_z < 0:
        return False
    lik_num = math.perm(big_l, lost) * math.perm(big_g, gained) * math.perm(big_z, same)
    lik_den = math.perm(size, n)
    polya_num = math.factorial(lost) * math.factorial(gained) * rising(8, same)
    polya_den = rising(10, n)
    return Fraction(lik_num, lik_den) > alpha * Fraction(polya_num, polya_den)


def full_outcome(size: int, big_l: int, big_g: int, **policy) -> str:
    ci = stats.score_interval(size, big_l, big_g)
    return stats.decide(100 * (big_g - big_l) / size, ci, **policy)[0]


# --- the confidence sequence -----------------------------------------------------------------


def test_truth_stays_inside_at_every_look_in_at_least_95_percent_of_shuffles():
    """Time-uniform coverage: over 1,000 shuffles, the true composition is excluded at *some* n
    (looking after every single example) in at most 5% of them."""
    size, big_l, big_g = 200, 24, 10  # full-run delta -7 points, 17% flips
    rng = random.Random(20261130)
    misses = 0
    for _ in range(1000):
        for n, (lost, gained) in enumerate(shuffled_counts(big_l, big_g, size, rng), start=1):
            cs = sequential._FiniteCS(lost, gained, n, size, 0.95)
            if cs.f(big_l, big_g) <= cs.thr:
                misses += 1
                break
    assert misses / 1000 <= 0.05


def test_reported_interval_contains_the_full_delta_at_every_look():
    size, big_l, big_g = 150, 20, 5
    truth = 100 * (big_g - big_l) / size
    rng = random.Random(7)
    never_missed = 0
    paths = 40
    for _ in range(paths):
        counts = shuffled_counts(big_l, big_g, size, rng)
        ok = True
        for n in range(15, size + 1, 15):
            low, high = stats.paired_confidence_sequence(*counts[n - 1], n, n_max=size)
            ok &= low - 1e-9 <= truth <= high + 1e-9
        never_missed += ok
    assert never_missed >= 0.95 * paths


def test_without_replacement_version_matches_a_brute_force_enumeration():
    """The interval contains the projection of the exact set (checked in integers) and is at most
    one example wider on each side (the convex relaxation)."""
    rng = random.Random(3)
    alpha = Fraction(1, 20)
    for _ in range(60):
        size = rng.randint(1, 45)
        n = rng.randint(0, size)
        lost = rng.randint(0, n)
        gained = rng.randint(0, n - lost)
        diffs = [
            big_g - big_l
            for big_l in range(lost, size + 1)
            for big_g in range(gained, size - big_l + 1)
            if in_exact_cs(big_l, big_g, lost, gained, n, size, alpha)
        ]
        low, high = stats.paired_confidence_sequence(lost, gained, n, n_max=size)
        lo_d, hi_d = round(low * size / 100), round(high * size / 100)
        assert lo_d <= min(diffs) <= lo_d + 1
        assert hi_d - 1 <= max(diffs) <= hi_d


def test_with_replacement_version_covers_an_iid_mean():
    rng = np.random.default_rng(11)
    p_lost, p_gained = 0.12, 0.04  # mean difference -8 points
    paths, missed = 40, 0
    for _ in range(paths):
        draws = rng.choice(3, size=400, p=[1 - p_lost - p_gained, p_lost, p_gained])
        lost, gained = np.cumsum(draws == 1), np.cumsum(draws == 2)
        for n in (30, 100, 400):
            low, high = stats.paired_confidence_sequence(int(lost[n - 1]), int(gained[n - 1]), n)
            if not low <= -8.0 <= high:
                missed += 1
                break
    assert missed <= 0.05 * paths


def test_narrows_with_n_and_collapses_to_the_full_delta_at_n_max():
    size = 970
    widths, widths_iid = [], []
    for n in (50, 100, 200, 400, 800, 900, 960):
        lost, gained = round(0.08 * n), round(0.03 * n)
        low, high = stats.paired_confidence_sequence(lost, gained, n, n_max=size)
        assert low <= 100 * (gained - lost) / n <= high
        widths.append(high - low)
        low, high = stats.paired_confidence_sequence(lost, gained, n)
        widths_iid.append(high - low)
    assert all(a > b for a, b in itertools.pairwise(widths))
    assert all(a > b for a, b in itertools.pairwise(widths_iid))
    # finite-population correction: far narrower than the with-replacement sequence near the end
    assert widths[-1] < 0.3 * widths_iid[-1]
    assert stats.paired_confidence_sequence(78, 29, 970, n_max=970) == (100 * -49 / 970, 100 * -49 / 970)
    assert stats.paired_confidence_sequence(0, 0, 0, n_max=970) == (-100.0, 100.0)
    assert stats.paired_confidence_sequence(0, 0, 0) == (-100.0, 100.0)


def test_wider_than_the_fixed_n_interval_early_and_deterministically_bounded():
    low, high = stats.paired_confidence_sequence(8, 2, 100, n_max=970)
    t_low, t_high = stats.score_interval(100, 8, 2)
    assert low < t_low and high > t_high  # the price of looking as often as one likes
    assert high - low < 2.5 * (t_high - t_low)  # but not absurdly so
    # never beyond what the unseen examples could do
    low, high = stats.paired_confidence_sequence(10, 0, 95, n_max=100)
    assert low >= 100 * (0 - 10 - 5) / 100 and high <= 100 * (0 - 10 + 5) / 100


def test_higher_confidence_is_wider():
    a = stats.paired_confidence_sequence(20, 8, 300, n_max=970, confidence=0.9)
    b = stats.paired_confidence_sequence(20, 8, 300, n_max=970, confidence=0.99)
    assert b[0] < a[0] and b[1] > a[1]


# --- the stopping rule -----------------------------------------------------------------------


def test_keeps_going_on_ambiguous_data():
    assert stats.early_stop_decision(3, 2, 50, 970, max_drop=2.0) is None
    assert stats.early_stop_decision(15, 10, 250, 970, max_drop=2.0) is None
    assert stats.early_stop_decision(15, 10, 250, 970, max_drop=2.0, strict=True) is None
    assert stats.early_stop_decision(0, 0, 50, 970, min_gain=1.0) is None


def test_fails_quickly_on_a_30_point_drop():
    rng = random.Random(5)
    for _ in range(40):
        counts = shuffled_counts(291, 0, 970, rng)  # every flip a loss: -30 points
        stop = next(n for n in range(50, 971, 50) if stats.early_stop_decision(*counts[n - 1], n, 970, max_drop=2.0))
        assert stop <= 150
        assert stats.early_stop_decision(*counts[stop - 1], stop, 970, max_drop=2.0) == "fail"
    # strict, too: the complete run's interval will certainly lie below -2
    assert stats.early_stop_decision(30, 0, 100, 970, max_drop=2.0, strict=True) == "fail"


def test_passes_early_on_a_clean_adapter():
    assert stats.early_stop_decision(1, 1, 500, 970, max_drop=2.0) == "pass"
    assert stats.early_stop_decision(1, 1, 900, 970, max_drop=2.0, strict=True) == "pass"


def test_deterministic_bound_stops_even_at_extreme_confidence():
    # 5 examples left: the full-run delta is at most (0 - 8 + 5) / 100 = -3 points
    assert stats.early_stop_decision(8, 0, 95, 100, max_drop=2.0, confidence=1 - 1e-12) == "fail"
    # 1 example left: the full-run delta is at least -1 point
    assert stats.early_stop_decision(1, 1, 99, 100, max_drop=2.0, confidence=1 - 1e-12) == "pass"
    assert stats.early_stop_decision(1, 1, 98, 100, max_drop=2.0, confidence=1 - 1e-12) == "pass"  # >= -2
    # 2 left: anywhere from -3 (fail) to +1 (pass); at this confidence only the bound decides
    assert stats.early_stop_decision(2, 1, 98, 100, max_drop=2.0, confidence=1 - 1e-12) is None


def test_at_n_max_it_is_the_complete_runs_verdict():
    for lost, gained in [(0, 0), (12, 3), (10, 0), (11, 0), (30, 31), (40, 2)]:
        for policy in (
            {"max_drop": 2.0},
            {"max_drop": 2.0, "strict": True},
            {"min_gain": 1.0},
            {"max_drop": 1.0, "min_gain": -5.0, "strict": True},
        ):
            expected = full_outcome(500, lost, gained, **policy)
            assert stats.early_stop_decision(lost, gained, 500, 500, **policy) == expected


def test_never_stops_against_the_complete_run_in_a_small_simulation():
    """Clear regressions, clear passes and a threshold case, default and strict: no stop may
    contradict the complete run (guarantee: <= 5% of shuffles; expected: almost none)."""
    size, chunk = 300, 25
    rng = random.Random(20261130)
    wrong = stops = 0
    cells = [(15, 15, False), (12, 6, False), (30, 0, False), (22, 7, False), (30, 0, True), (2, 2, True)]
    for big_l, big_g, strict in cells:
        full = full_outcome(size, big_l, big_g, max_drop=2.0, strict=strict)
        for _ in range(40):
            counts = shuffled_counts(big_l, big_g, size, rng)
            for n in range(chunk, size + 1, chunk):
                got = stats.early_stop_decision(*counts[n - 1], n, size, max_drop=2.0, strict=strict)
                if got is not None:
                    stops += n < size
                    wrong += got != full
                    break
    assert stops > 60  # it does stop early
    assert wrong == 0


def test_every_stop_is_right_for_every_plausible_composition():
    """Brute force on small benchmarks: a returned outcome must be the complete run's outcome for
    every composition in the exact (integer-checked) confidence sequence, for both policies."""
    rng = random.Random(17)
    alpha = Fraction(1, 20)
    stopped = 0
    for _ in range(120):
        size = rng.randint(2, 40)
        n = rng.randint(0, size - 1)
        flips = rng.random() * 0.6
        lost = sum(rng.random() < flips * 0.7 for _ in range(n))
        gained = sum(rng.random() < flips * 0.3 for _ in range(n - lost))
        policy = rng.choice(
            [{"max_drop": 2.0}, {"max_drop": 10.0}, {"min_gain": 0.0}, {"max_drop": 5.0, "min_gain": -20.0}]
        )
        policy = {**policy, "strict": rng.random() < 0.5}
        got = stats.early_stop_decision(lost, gained, n, size, **policy)
        if got is None:
            continue
        stopped += 1
        for big_l in range(lost, size + 1):
            for big_g in range(gained, size - big_l + 1):
                if in_exact_cs(big_l, big_g, lost, gained, n, size, alpha):
                    assert full_outcome(size, big_l, big_g, **policy) == got
    assert stopped > 10


def test_array_version_matches_scalar():
    rng = np.random.default_rng(4)
    for size, n in [(970, 100), (970, 600), (500, 450), (1490, 50), (200, 200)]:
        lost = rng.binomial(n, 0.08, size=40)
        gained = rng.binomial(n - lost, 0.04)
        for policy in ({"max_drop": 2.0}, {"min_gain": 0.5}, {"max_drop": 3.0, "min_gain": -1.0}):
            arr = early_stop_decision_array(lost, gained, n, size, **policy)
            for a, b, got in zip(lost, gained, arr):
                assert (stats.early_stop_decision(int(a), int(b), n, size, **policy) or "continue") == got


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((-1, 0, 10), {}),
        ((5, 6, 10), {}),
        ((0, 0, 11), {"n_max": 10}),
        ((0, 0, 0), {"n_max": 0}),
        ((0, 0, 10), {"confidence": 1.0}),
        ((0, 0, 10), {"confidence": 0.0}),
    ],
)
def test_confidence_sequence_validates(args, kwargs):
    with pytest.raises(ValueError):
        stats.paired_confidence_sequence(*args, **kwargs)


def test_counts_must_be_integers():
    with pytest.raises(TypeError):
        stats.paired_confidence_sequence(1.5, 0, 10)
    with pytest.raises(TypeError):
        stats.early_stop_decision(1, 0, 10.0, 100, max_drop=2.0)
    assert stats.paired_confidence_sequence(np.int64(3), np.int64(1), np.int64(40), n_max=np.int64(100))


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((0, 0, 10, 100), {}),  # no threshold
        ((0, 0, 10, 100), {"max_drop": math.nan}),
        ((0, 0, 10, 100), {"min_gain": math.inf}),
        ((0, 0, 101, 100), {"max_drop": 2.0}),
        ((6, 5, 10, 100), {"max_drop": 2.0}),
        ((0, -1, 10, 100), {"max_drop": 2.0}),
        ((0, 0, 10, 100), {"max_drop": 2.0, "confidence": 1.5}),
    ],
)
def test_early_stop_decision_validates(args, kwargs):
    with pytest.raises(ValueError):
        stats.early_stop_decision(*args, **kwargs)
    if "max_drop" in kwargs or "min_gain" in kwargs:
        with pytest.raises(ValueError):
            early_stop_decision_array([args[0]], [args[1]], args[2], args[3], **kwargs)


def test_policy_is_checked_when_made_and_decides_like_the_function():
    with pytest.raises(ValueError, match="needs a threshold"):
        stats.EarlyStopPolicy()
    with pytest.raises(ValueError, match="finite"):
        stats.EarlyStopPolicy(max_drop=math.nan)
    policy = stats.EarlyStopPolicy(max_drop=2.0, strict=True)
    with pytest.raises(AttributeError):
        policy.max_drop = 3.0  # type: ignore[misc]  # frozen
    for lost, gained, n in [(0, 0, 100), (30, 0, 100), (2, 1, 450), (9, 1, 500)]:
        expected = stats.early_stop_decision(lost, gained, n, 500, max_drop=2.0, strict=True, confidence=0.9)
        assert policy.decision(lost, gained, n, 500, 0.9) == expected
