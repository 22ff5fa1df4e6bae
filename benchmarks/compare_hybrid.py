"""Does hybrid LinUCB beat disjoint LinUCB? The replay evidence behind the default policy.

Two synthetic tables (1,000 rows, best arm depends on the context): the 8 default arms,
whose operators are all different, and 25 arms on parameter grids (TIES/DARE densities,
linear weights, SLERP t, task-arithmetic λ), where neighbouring arms behave alike. Prints
gap closure with 95 % intervals over seeds. About two minutes on 2 shared cores:

    python benchmarks/compare_hybrid.py [--seeds 20] [--jobs 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bandit.offline.outcomes import default_arm_specs, synthetic_outcomes, variant_arm_specs  # noqa: E402
from bandit.offline.replay import replay, summarize  # noqa: E402

POLICIES = ["linucb", "hybrid", "hybrid:arm_lambda=10", "linucb:alpha=0.5", "hybrid:alpha=0.5,arm_lambda=4"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    for name, specs, seed in (("8 default arms", default_arm_specs(), 0), ("25 grid arms", variant_arm_specs(), 1)):
        table = synthetic_outcomes(1000, arms=specs, seed=seed)
        t0 = time.perf_counter()
        rep = summarize(table, replay(table, POLICIES, args.seeds, specs={s.name: s for s in specs}, jobs=args.jobs))
        print(f"{name} ({time.perf_counter() - t0:.0f} s): gap closure, all rounds | last half")
        for p in rep["policies"]:
            g, h = p["gap_closure"], p["gap_closure_last_half"]
            print(f"  {p['policy']:<30} {g['mean']:.3f} [{g['low']:.3f}, {g['high']:.3f}] | "
                  f"{h['mean']:.3f} [{h['low']:.3f}, {h['high']:.3f}]")


if __name__ == "__main__":
    main()
