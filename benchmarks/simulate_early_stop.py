"""Simulate sequential early stopping (``--ftgate-early-stop``) against the complete run.

Usage: python benchmarks/simulate_early_stop.py [--runs 2000] [--seed 20261130]

A benchmark of ``n_max`` examples (500, 970, 1490) is a fixed population of lost, gained and
unchanged examples whose full-run delta is the cell's true delta (0, -1, -2, -3, -5, -10, -30
points, rounded to a whole number of examples) with 5/10/20% of examples flipping (raised to
|delta| where a drop needs more flips than that: every flip is then a loss). Each run shuffles the
benchmark uniformly and evaluates it in chunks of 50; after each chunk it asks

* ``stats.early_stop_decision`` (vectorised twin ``stats_arrays.early_stop_decision_array``; default policy,
  ``max_drop`` = 2.0, confidence 0.95), stopping at the first verdict, and
* naive peeking, for comparison: stop as soon as the plain (fixed-n) Tango 95% interval excludes
  the threshold (``fail`` when its upper bound is below -2.0, ``pass`` when its lower bound is
  above it), else go on; at the end both use the complete run's verdict.

It reports, per cell, the share of runs whose early-stopped verdict differs from the complete
run's verdict (which is fixed: the population is), and the mean share of the benchmark that was
evaluated. The early-stopping rule promises a disagreement rate of at most 5% in every cell,
whatever the data; naive peeking promises nothing, and near the threshold it breaks. A sample of
decisions is re-done with the scalar ``early_stop_decision`` so the numbers describe the library.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pytest_ftgate import stats  # noqa: E402
from stats_arrays import early_stop_decision_array, score_interval_array  # noqa: E402

NS = (500, 970, 1490)
DELTAS = (0.0, -1.0, -2.0, -3.0, -5.0, -10.0, -30.0)  # points, tuned - base, on all n_max examples
FLIPS = (0.05, 0.10, 0.20)
CHUNK = 50
MAX_DROP = 2.0
CONFIDENCE = 0.95
CHECKS_PER_N = 150  # decisions per n_max re-done with the scalar function


def population(n_max: int, delta: float, flip: float) -> tuple[int, int, bool]:
    """(lost, gained, raised) on the whole benchmark: full-run delta ~ delta, flips ~ flip * n_max
    (one more where parity needs it); ``raised`` when the drop needs more flips than that."""
    diff = round(delta * n_max / 100)  # gained - lost
    flips = round(flip * n_max)
    raised = abs(diff) > flips
    flips = max(flips, abs(diff))
    if (flips - diff) % 2:
        flips += 1
    return (flips - diff) // 2, (flips + diff) // 2, raised


def full_verdict(lost: int, gained: int, n_max: int) -> str:
    ci = stats.score_interval(n_max, lost, gained, CONFIDENCE)
    return stats.decide(100 * (gained - lost) / n_max, ci, max_drop=MAX_DROP)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="shuffles per cell")
    parser.add_argument("--seed", type=int, default=20261130)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    runs = args.runs
    rows = []
    mismatches = checked = 0
    check_rng = np.random.default_rng([args.seed, 999])

    for n_max in NS:
        looks = list(range(CHUNK, n_max, CHUNK)) + [n_max]
        cells = [(d, f) for d in DELTAS for f in FLIPS]
        lost_at = np.empty((len(cells), runs, len(looks)), dtype=np.int64)
        gained_at = np.empty_like(lost_at)
        truth = []
        for c, (delta, flip) in enumerate(cells):
            big_l, big_g, raised = population(n_max, delta, flip)
            truth.append((big_l, big_g, full_verdict(big_l, big_g, n_max), raised))
            codes = np.zeros(n_max, dtype=np.int8)
            codes[:big_l] = 1
            codes[big_l : big_l + big_g] = 2
            rng = np.random.default_rng([args.seed, n_max, c])
            order = rng.permuted(np.tile(codes, (runs, 1)), axis=1)
            idx = np.asarray(looks) - 1
            lost_at[c] = np.cumsum(order == 1, axis=1)[:, idx]
            gained_at[c] = np.cumsum(order == 2, axis=1)[:, idx]

        # walk the looks; decisions are computed once per distinct (lost, gained) over all cells
        es_verdict = np.full((len(cells), runs), "", dtype=object)
        es_used = np.zeros((len(cells), runs), dtype=np.int64)
        nv_verdict = np.full((len(cells), runs), "", dtype=object)
        nv_used = np.zeros((len(cells), runs), dtype=np.int64)
        for j, n in enumerate(looks):
            lj, gj = lost_at[:, :, j], gained_at[:, :, j]
            key = lj * (n_max + 1) + gj
            for verdict, used, naive in ((es_verdict, es_used, False), (nv_verdict, nv_used, True)):
                active = verdict == ""
                if not active.any():
                    continue
                uniq, inverse = np.unique(key[active], return_inverse=True)
                ul, ug = uniq // (n_max + 1), uniq % (n_max + 1)
                if naive:
                    if n == n_max:
                        dec = np.array([full_verdict(int(a), int(b), n_max) for a, b in zip(ul, ug)], dtype=object)
                    else:
                        low, high = score_interval_array(n, ul, ug, CONFIDENCE)
                        dec = np.where(high < -MAX_DROP, "fail", np.where(low > -MAX_DROP, "pass", ""))
                else:
                    dec = early_stop_decision_array(ul, ug, n, n_max, max_drop=MAX_DROP, confidence=CONFIDENCE)
                    dec = np.where(dec == "continue", "", dec)
                    for i in check_rng.choice(len(uniq), size=min(len(uniq), CHECKS_PER_N // len(looks) + 1)):
                        scalar = stats.early_stop_decision(int(ul[i]), int(ug[i]), n, n_max, max_drop=MAX_DROP)
                        checked += 1
                        mismatches += (scalar or "") != dec[i]
                new = dec[inverse].astype(object)
                stopped = new != ""
                sel = np.flatnonzero(active.ravel())[stopped]
                verdict.ravel()[sel] = new[stopped]
                used.ravel()[sel] = n

        for c, (delta, flip) in enumerate(cells):
            big_l, big_g, full, raised = truth[c]
            rows.append(
                {
                    "n_max": n_max,
                    "delta": delta,
                    "true": 100 * (big_g - big_l) / n_max,
                    "flip": (big_l + big_g) / n_max,
                    "raised": raised,
                    "full": full,
                    "es_dis": float(np.mean(es_verdict[c] != full)),
                    "es_used": float(np.mean(es_used[c]) / n_max),
                    "es_early": float(np.mean(es_used[c] < n_max)),
                    "nv_dis": float(np.mean(nv_verdict[c] != full)),
                    "nv_used": float(np.mean(nv_used[c]) / n_max),
                }
            )

    print(
        f"# Early stopping vs the complete run: max_drop = {MAX_DROP}, confidence = {CONFIDENCE}, "
        f"chunks of {CHUNK}, {runs:,} shuffles per cell, seed {args.seed}\n"
    )
    print(
        "disagree = share of runs whose verdict differs from the complete run's (%); used = mean share "
        "of the benchmark evaluated (%); stopped early = runs that stopped before the last chunk (%). "
        "Naive = stop when the fixed-n Tango 95% interval excludes -2.0. True delta and flips are the "
        "benchmark's, after rounding to whole examples (* flips raised to |delta|).\n"
    )
    print(
        "| n_max | true delta | flips | full-run verdict | early-stop disagree | early-stop used "
        "| stopped early | naive disagree | naive used |"
    )
    print("|---:|---:|---:|:---|---:|---:|---:|---:|---:|")
    for r in rows:
        raised = "*" if r["raised"] else ""
        print(
            f"| {r['n_max']} | {r['true']:+.2f} | {100 * r['flip']:.1f}%{raised} | {r['full']} "
            f"| {100 * r['es_dis']:.2f} | {100 * r['es_used']:.1f} | {100 * r['es_early']:.1f} "
            f"| {100 * r['nv_dis']:.2f} | {100 * r['nv_used']:.1f} |"
        )

    print("\n## By true delta (mean over n_max and flips)\n")
    print("| true delta | early-stop disagree | early-stop used | naive disagree (max) | naive used |")
    print("|---:|---:|---:|---:|---:|")
    for delta in DELTAS:
        sel = [r for r in rows if r["delta"] == delta]

        def mean(key: str, sel: list[dict] = sel) -> float:
            return 100 * sum(r[key] for r in sel) / len(sel)

        print(
            f"| {delta:+g} | {mean('es_dis'):.2f} | {mean('es_used'):.1f} "
            f"| {mean('nv_dis'):.2f} ({100 * max(r['nv_dis'] for r in sel):.1f}) | {mean('nv_used'):.1f} |"
        )

    print()
    worst = max(rows, key=lambda r: r["es_dis"])
    worst_naive = max(rows, key=lambda r: r["nv_dis"])
    check1 = worst["es_dis"] <= 0.05
    print(
        f"CHECK early-stopped verdict differs from the complete run's in <= 5% of runs, every cell: "
        f"{'PASS' if check1 else 'FAIL'} (worst {100 * worst['es_dis']:.2f}% at n_max={worst['n_max']}, "
        f"delta {worst['true']:+.2f}, flips {100 * worst['flip']:.1f}%)"
    )
    print(
        f"(naive peeking, for comparison: worst {100 * worst_naive['nv_dis']:.1f}% at "
        f"n_max={worst_naive['n_max']}, delta {worst_naive['true']:+.2f}, flips {100 * worst_naive['flip']:.1f}%; "
        f"{sum(r['nv_dis'] > 0.05 for r in rows)} of {len(rows)} cells above 5%)"
    )
    check2 = mismatches == 0
    print(
        f"CHECK scalar early_stop_decision agrees with the vectorised run on {checked} decisions: "
        f"{'PASS' if check2 else f'FAIL ({mismatches})'}"
    )
    print(f"\nSUMMARY: {'PASS' if check1 and check2 else 'FAIL'}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0 if check1 and check2 else 1


if __name__ == "__main__":
    sys.exit(main())
