"""Does the intercept-only prior from one outcome table ever hurt on another? (issue #10 item 4)

For each (prior table, target table) pair every policy is replayed on the target without and
with the prior, on the same arrival orders; prints gap closure (single pass and ×k last half)
and the paired per-seed difference "with − without" with a 95 % t interval. A safe prior
keeps that difference ≥ 0 within noise, on tables from another regime too.

    python benchmarks/prior_transfer.py --prior A.csv --target B.csv [--seeds 20] [--passes 10]
    python benchmarks/prior_transfer.py --synthetic      # two synthetic regimes and the in-sample case

Tables without a request column are grouped so both orders of a pair are one request.
"""
from __future__ import annotations

import argparse
import os
import sys

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bandit.offline.outcomes import group_pair_orders, read_outcomes, synthetic_outcomes  # noqa: E402
from bandit.offline.prior import fit_prior  # noqa: E402
from bandit.offline.replay import interval, replay, run_metrics  # noqa: E402

POLICIES = ["pooled", "linucb", "lints", "egreedy"]


def load(path: str):
    t = read_outcomes(path)
    return group_pair_orders(t) if t.requests is None and all(a and b for a, b in t.pairs) else t


def fmt(x: dict) -> str:
    return f"{x['mean']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]"


def compare(name: str, prior_table, target, policies, seeds: int, passes: int, jobs: int) -> None:
    prior = fit_prior(prior_table, name)
    print(f"{name}: prior strength {prior.strength:.2f} (level {prior.level:.3f}); target {target.n_requests} requests")
    for label, k, key in (("single pass", 1, "gap_closure"), (f"x{passes}, last half", passes, "gap_closure_last_half")):
        res = replay(target, policies, seeds, jobs=jobs, passes=k, prior=prior)
        for plain, primed in zip(res[0::2], res[1::2]):
            a = [run_metrics(r)[key] for r in plain.runs]
            b = [run_metrics(r)[key] for r in primed.runs]
            print(f"  {label:<16} {plain.label:<10} without {fmt(interval(a))}  with {fmt(interval(b))}  "
                  f"difference {fmt(interval(list(np.subtract(b, a))))}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prior", action="append", default=[])
    ap.add_argument("--target", action="append", default=[])
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--policy", "-p", action="append")
    args = ap.parse_args()
    policies = args.policy or POLICIES
    if args.synthetic:
        # two regimes: other operator coefficients (seed), another reward level, other tasks
        a = synthetic_outcomes(90, candidates=2, seed=10, level=0.6, tasks=("a0", "a1", "a2"))
        b = synthetic_outcomes(90, candidates=2, seed=11, level=0.4, tasks=("b0", "b1"))
        compare("synthetic A -> B (other regime)", a, b, policies, args.seeds, args.passes, args.jobs)
        compare("synthetic B -> A (other regime)", b, a, policies, args.seeds, args.passes, args.jobs)
        compare("synthetic B -> B (in-sample)", b, b, policies, args.seeds, args.passes, args.jobs)
    for p, t in zip(args.prior, args.target):
        compare(f"{p} -> {t}", load(p), load(t), policies, args.seeds, args.passes, args.jobs)


if __name__ == "__main__":
    main()
