"""Simulate paired base/tuned outcomes and measure how the gate's verdicts and intervals behave.

Usage: python benchmarks/simulate_verdicts.py [--sims 20000] [--seed 20261129]

For every cell of the grid (n in 200/500/970/1490 examples; 5/10/20% of examples flipping; true
drop 0 (A/A: flips but no net change), 1, 2, 3, 4, 5 points) it draws paired 2x2 tables,
computes the paired interval (Tango's score interval with a skewness correction, "SCAS":
``pytest_ftgate.stats``, vectorised twin ``stats_arrays.score_interval_array``) and the verdicts of the default
and strict policies at max_drop = 2.0, and reports, in percent of simulated runs:

* false-fail: verdict ``fail`` although the true drop is <= max_drop (cells with drop 0, 1, 2);
* false-pass: verdict ``pass`` although the true drop is > max_drop (cells with drop 3, 4, 5);
* inconclusive: strict policy only (the default policy never returns it);
* coverage: the interval contains the true difference (simulated, and exactly by enumerating all
  tables, which has no Monte Carlo error), next to the paired Wald interval for comparison.

Base accuracy is drawn per run uniformly from 60-80%. The true cell probabilities are
P(lost) = (f + drop)/2 and P(gained) = (f - drop)/2 for flip rate f, so the true difference is
exactly -drop. (The interval and verdicts depend only on n, lost and gained; base accuracy shapes
the concordant cells only.) The script cross-checks a subsample against the scalar
``paired_diff_interval`` and ``decide`` so the numbers describe the library's own code.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pytest_ftgate import stats  # noqa: E402
from stats_arrays import score_interval_array  # noqa: E402

NS = (200, 500, 970, 1490)
FLIPS = (0.05, 0.10, 0.20)
DROPS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)  # points; 4 = twice the margin
MAX_DROP = 2.0
CONFIDENCE = 0.95
CHECK_SUBSAMPLE = 25  # runs per cell re-done with the scalar library functions


def draw_tables(rng: np.random.Generator, n: int, f: float, drop: float, sims: int):
    """Paired 2x2 tables: (lost, gained, both right, both wrong) counts per simulated run."""
    d = drop / 100
    p_lost, p_gained = (f + d) / 2, (f - d) / 2
    base_acc = rng.uniform(0.60, 0.80, size=sims)
    lost = rng.binomial(n, p_lost, size=sims)
    gained = rng.binomial(n - lost, p_gained / (1 - p_lost)) if p_gained > 0 else np.zeros(sims, int)
    rest = n - lost - gained
    p_both = np.clip((base_acc - p_lost) / (1 - p_lost - p_gained), 0.0, 1.0)
    both = rng.binomial(rest, p_both)
    return lost, gained, both, rest - both


def verdicts(delta, low, high, strict: bool):
    """The ``decide`` rule for max_drop, vectorised: array of 'pass' / 'fail' / 'inconclusive'."""
    threshold = -MAX_DROP
    if not strict:
        return np.where(-delta > MAX_DROP + 1e-9, "fail", "pass")
    return np.where(low >= threshold, "pass", np.where(high < threshold, "fail", "inconclusive"))


def exact_coverage(n: int, f: float, drop: float) -> float:
    """Coverage summed over every plausible (lost, gained) table: no Monte Carlo error."""
    d = drop / 100
    p_lost, p_gained = (f + d) / 2, (f - d) / 2

    def span(p: float) -> np.ndarray:
        sd = math.sqrt(n * p * (1 - p))
        return np.arange(max(0, int(n * p - 12 * sd - 2)), min(n, int(n * p + 12 * sd + 2)) + 1)

    lost, gained = np.meshgrid(span(p_lost), span(p_gained) if p_gained > 0 else [0], indexing="ij")
    keep = lost + gained <= n
    lost, gained = lost[keep], gained[keep]
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    logp = (
        log_fact[n]
        - log_fact[lost]
        - log_fact[gained]
        - log_fact[n - lost - gained]
        + lost * math.log(p_lost)
        + (gained * math.log(p_gained) if p_gained > 0 else 0.0)
        + (n - lost - gained) * math.log(1 - f)
    )
    p = np.exp(logp)
    low, high = score_interval_array(n, lost, gained, CONFIDENCE)
    return float(p[(low <= -drop) & (-drop <= high)].sum() / p.sum())


def wald(n, lost, gained):
    z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
    d = (gained - lost) / n
    half = z * np.sqrt(np.maximum((gained + lost) / n - d * d, 0.0) / n)
    return 100 * (d - half), 100 * (d + half)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=20_000, help="simulated runs per cell")
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args(argv)
    start = time.perf_counter()

    rows = []
    mismatches = 0
    for i, (n, f, drop) in enumerate((n, f, d) for n in NS for f in FLIPS for d in DROPS):
        rng = np.random.default_rng([args.seed, i])
        lost, gained, both, _neither = draw_tables(rng, n, f, drop, args.sims)
        base_acc = 100 * (both + lost) / n
        tuned_acc = 100 * (both + gained) / n
        delta = tuned_acc - base_acc  # as results.Comparison computes it
        low, high = score_interval_array(n, lost, gained, CONFIDENCE)
        default = verdicts(delta, low, high, strict=False)
        strict = verdicts(delta, low, high, strict=True)
        wl, wh = wald(n, lost, gained)

        for j in range(CHECK_SUBSAMPLE):  # the scalar library code must agree
            ci = stats.score_interval(n, int(lost[j]), int(gained[j]), CONFIDENCE)
            ok = abs(ci[0] - low[j]) < 1e-9 and abs(ci[1] - high[j]) < 1e-9
            ok &= stats.decide(float(delta[j]), ci, max_drop=MAX_DROP)[0] == default[j]
            ok &= stats.decide(float(delta[j]), ci, max_drop=MAX_DROP, strict=True)[0] == strict[j]
            mismatches += not ok

        rows.append(
            {
                "n": n,
                "flip": f,
                "drop": drop,
                "def_fail": float(np.mean(default == "fail")),
                "def_pass": float(np.mean(default == "pass")),
                "str_fail": float(np.mean(strict == "fail")),
                "str_pass": float(np.mean(strict == "pass")),
                "str_inc": float(np.mean(strict == "inconclusive")),
                "cover": float(np.mean((low <= -drop) & (-drop <= high))),
                "cover_exact": exact_coverage(n, f, drop),
                "wald": float(np.mean((wl <= -drop) & (-drop <= wh))),
                "width": float(np.median(high - low)),
                "mdd": stats.minimal_detectable_drop(n, f, CONFIDENCE, 0.8),
            }
        )

    print(
        f"# Verdict simulation: max_drop = {MAX_DROP}, confidence = {CONFIDENCE}, "
        f"{args.sims:,} runs per cell, seed {args.seed}\n"
    )
    print(
        "false-fail = `fail` when true drop <= 2.0 (drops 0-2); false-pass = `pass` when true drop "
        "> 2.0 (drops 3-5); `-` where the rate does not apply. Rates and coverage in %.\n"
        "MDD = minimal detectable drop (points) at 80% power. Base accuracy ~ U(60%, 80%).\n"
    )
    print(
        "| n | flips | true drop | default false-fail | default false-pass | strict false-fail "
        "| strict false-pass | strict inconclusive | coverage (sim) | coverage (exact) "
        "| Wald coverage | median width | MDD |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        bad = r["drop"] > MAX_DROP
        print(
            f"| {r['n']} | {r['flip']:.0%} | {r['drop']:g} "
            f"| {'-' if bad else pct(r['def_fail'])} | {pct(r['def_pass']) if bad else '-'} "
            f"| {'-' if bad else pct(r['str_fail'])} | {pct(r['str_pass']) if bad else '-'} "
            f"| {pct(r['str_inc'])} | {pct(r['cover'])} | {pct(r['cover_exact'])} "
            f"| {pct(r['wald'])} | {r['width']:.1f} | {r['mdd']:.1f} |"
        )

    print("\n## By true drop (mean over n and flip rate)\n")
    print(
        "| true drop | default fail | default pass | strict fail | strict inconclusive | strict pass "
        "| coverage (sim) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for drop in DROPS:
        sel = [r for r in rows if r["drop"] == drop]

        def mean(key: str, sel: list[dict] = sel) -> str:
            return pct(sum(r[key] for r in sel) / len(sel))

        print(
            f"| {drop:g} | {mean('def_fail')} | {mean('def_pass')} | {mean('str_fail')} "
            f"| {mean('str_inc')} | {mean('str_pass')} | {mean('cover')} |"
        )

    # --- the checks ------------------------------------------------------------------------
    print()
    at4 = [r for r in rows if r["drop"] == 2 * MAX_DROP]
    worst4 = max(at4, key=lambda r: r["str_pass"])
    check1 = worst4["str_pass"] <= 0.05
    outside = [r for r in rows if not 0.94 <= r["cover"] <= 0.96]
    below = [r for r in rows if r["cover"] < 0.94]
    check2 = not outside
    covers = [r["cover"] for r in rows]
    exact = [r["cover_exact"] for r in rows]
    outside_exact = [r for r in rows if not 0.94 <= r["cover_exact"] <= 0.96]
    print(
        f"CHECK strict false-pass at a true drop of {2 * MAX_DROP:g} points (twice the margin) <= 5% "
        f"in every cell: {'PASS' if check1 else 'FAIL'} (worst {pct(worst4['str_pass'])}% at "
        f"n={worst4['n']}, flips {worst4['flip']:.0%})"
    )
    print(
        f"CHECK interval coverage within 1 point of nominal (94-96%) in every cell: "
        f"{'PASS' if check2 else 'FAIL'} (range {pct(min(covers))}-{pct(max(covers))}%, "
        f"mean {pct(sum(covers) / len(covers))}%"
        + (
            "; outside: "
            + ", ".join(
                f"n={r['n']} flips {r['flip']:.0%} drop {r['drop']:g}: {pct(r['cover'])}%"
                f" (exact {pct(r['cover_exact'])}%)"
                for r in outside
            )
            if outside
            else ""
        )
        + ")"
    )
    print(
        f"CHECK exact coverage (no Monte Carlo error) within 94-96% in every cell: "
        f"{'PASS' if not outside_exact else 'FAIL'} (range {pct(min(exact))}-{pct(max(exact))}%"
        + (
            "; outside: "
            + ", ".join(
                f"n={r['n']} flips {r['flip']:.0%} drop {r['drop']:g}: {pct(r['cover_exact'])}%"
                for r in outside_exact
            )
            if outside_exact
            else ""
        )
        + ")"
    )
    print(
        f"CHECK no cell under-covers (coverage >= 94%): {'PASS' if not below else 'FAIL'}"
    )
    print(
        f"CHECK scalar paired_diff_interval/decide agree with the vectorised run on "
        f"{CHECK_SUBSAMPLE * len(rows)} runs: {'PASS' if not mismatches else f'FAIL ({mismatches})'}"
    )
    summary = check1 and check2 and not outside_exact and not mismatches
    print(
        f"\nSUMMARY: In strict mode at confidence 0.95 the false-pass rate for a true drop of twice "
        f"the margin (4 points) must be <= 5%, and interval coverage within 1 point of nominal "
        f"(94-96%): {'PASS' if summary else 'FAIL'}"
    )
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0 if summary else 1


if __name__ == "__main__":
    sys.exit(main())
