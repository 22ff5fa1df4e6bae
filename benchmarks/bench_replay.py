"""Replay speed: 1,000 rows × 20 seeds × 5 learning policies (target: < 60 s on 2 cores).

Prints the wall time per policy and in total, and each policy's gap closure so a speed-up
that changed the results would show. Run from the repository root:

    python benchmarks/bench_replay.py [--jobs 2] [--rows 1000] [--seeds 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# The policies' matrices are tiny (≤ ~150 × 150): BLAS threads only fight over the cores.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bandit.offline.outcomes import synthetic_outcomes  # noqa: E402
from bandit.offline.replay import replay, summarize  # noqa: E402

POLICIES = ["linucb", "hybrid", "lints", "egreedy", "vw"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    table = synthetic_outcomes(args.rows, seed=0)
    t0 = time.perf_counter()
    results = replay(table, POLICIES, seeds=args.seeds, jobs=args.jobs)
    total = time.perf_counter() - t0
    rep = summarize(table, results)
    print(f"{args.rows} rows x {args.seeds} seeds x {len(POLICIES)} policies, {args.jobs} processes: "
          f"{total:.1f} s ({1e6 * total / (args.rows * args.seeds * len(POLICIES)):.0f} us per decision)")
    for p in rep["policies"]:
        g, h = p["gap_closure"], p["gap_closure_last_half"]
        print(f"  {p['policy']:<10} gap closure {g['mean']:.3f} [{g['low']:.3f}, {g['high']:.3f}]  "
              f"last half {h['mean']:.3f} [{h['low']:.3f}, {h['high']:.3f}]")
    print(f"seconds: {total:.1f} (target < 60)")


if __name__ == "__main__":
    main()
