"""Gap closure of the shipped policies on outcome tables: single pass and ×k recurrence.

Issue #10's figures: gap closure = (policy − best fixed arm) / (oracle − best fixed arm), over
20+ seeds with 95 % t intervals, once with one pass over the table and once with the table's
requests arriving `--passes` times (fresh random order each pass), read over the last half.
A table without a request column is grouped so both orders of a pair are one request
(`--no-group` keeps one row per request, the issue's original measurement). With `--prior
TABLE` every policy also runs with the intercept-only prior fitted on that table.

    python benchmarks/replay_gap.py [TABLE ...] [--seeds 20] [--passes 10] [--jobs 2] [--prior TABLE]

Default TABLE: the embedded zoo's table (~/.cache/simmerge/zoo/tiny/outcomes.csv).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bandit.offline.outcomes import group_pair_orders, read_outcomes, summarize_table  # noqa: E402
from bandit.offline.prior import prior_from_outcomes  # noqa: E402
from bandit.offline.replay import replay, summarize  # noqa: E402

POLICIES = ["linucb", "lints", "hybrid", "egreedy", "vw", "random"]


def fmt(x: dict) -> str:
    return "      -" if x["mean"] is None else f"{x['mean']:+.2f} [{x['low']:+.2f}, {x['high']:+.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tables", nargs="*", default=[os.path.expanduser("~/.cache/simmerge/zoo/tiny/outcomes.csv")])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--policy", "-p", action="append", help=f"default: {', '.join(POLICIES)}")
    ap.add_argument("--prior", help="outcome table to fit an intercept-only prior on")
    ap.add_argument("--no-group", action="store_true", help="one request per row even for both orders of a pair")
    args = ap.parse_args()
    policies = args.policy or POLICIES
    prior = prior_from_outcomes(args.prior) if args.prior else None
    for path in args.tables:
        table = read_outcomes(path)
        if table.requests is None and not args.no_group:
            table = group_pair_orders(table)
        s = summarize_table(table)
        print(f"{path}: {s.rows} rows in {s.requests} requests x {len(s.arms)} arms; best fixed arm "
              f"{s.best_fixed_arm} {s.best_fixed_mean:.4f} (order as listed), {s.best_fixed_arm_best_candidate} "
              f"{s.best_fixed_best_candidate_mean:.4f} (best order), oracle {s.oracle_mean:.4f}")
        if prior is not None:
            print(f"  prior from {prior.source}: strength {prior.strength:.2f}")
        t0 = time.perf_counter()
        single = summarize(table, replay(table, policies, args.seeds, jobs=args.jobs, prior=prior))
        multi = summarize(table, replay(table, policies, args.seeds, jobs=args.jobs, passes=args.passes, prior=prior))
        print(f"  gap closure, {args.seeds} seeds ({time.perf_counter() - t0:.0f} s)")
        print(f"  {'policy':<18} {'single pass':<22} {'x' + str(args.passes) + ', last half':<22} "
              f"{'x' + str(args.passes) + ' last half vs best-order fixed':<22}")
        for a, b in zip(single["policies"], multi["policies"]):
            print(f"  {a['policy']:<18} {fmt(a['gap_closure']):<22} {fmt(b['gap_closure_last_half']):<22} "
                  f"{fmt(b['gap_closure_vs_best_candidate_last_half'])}")


if __name__ == "__main__":
    main()
