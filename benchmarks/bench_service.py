"""Service speed: in-process propose+reward cycles per second, and `bandit reward` start-up.

    python benchmarks/bench_service.py [--cycles 3000] [--runs 15]

Prints figures and ratios; targets: ≥ 2,000 cycles/s with d = 32 features and K = 20
arms on a file database, and `bandit reward` wall time ≤ 3× `python -c "import sqlite3"`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cycles_per_second(db: str, cycles: int, d: int = 32, k: int = 20) -> float:
    import numpy as np

    from bandit.service import Service

    svc = Service(db)
    existing = len(svc.arms())
    for i in range(k - existing):
        svc.add_arm(f"extra{i}", "ties", {"density": round(0.1 + 0.04 * i, 2)})
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(d)]
    contexts = [dict(zip(names, map(float, rng.uniform(-1, 1, d)))) for _ in range(cycles)]
    # warm-up: schema grows to d, caches fill
    for ctx in contexts[:50]:
        svc.reward(svc.propose("bench", ctx, seed=1).event_id, 0.5)
    t0 = time.perf_counter()
    for i, ctx in enumerate(contexts):
        p = svc.propose("bench", ctx, seed=i)
        svc.reward(p.event_id, float(i % 7) / 7)
    return cycles / (time.perf_counter() - t0)


def wall(cmd: list[str], runs: int, env: dict) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        rate = cycles_per_second(db, args.cycles)
        print(f"in-process propose+reward, d=32 features, K=20 arms, file database: {rate:,.0f} cycles/s "
              f"(target >= 2,000: {rate / 2000:.2f}x of target)")

        # `bandit reward` as a user runs it: a fresh process per call.
        from bandit.service import Service

        svc = Service(db)
        ids = [svc.propose("bench", {"f0": 0.1}, seed=i).event_id for i in range(args.runs)]
        svc.store.close()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        baseline = wall([sys.executable, "-c", "import sqlite3"], args.runs, env)
        times = []
        for eid in ids:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "cli.py"), "reward", str(eid), "0.5", "--db", db],
                           check=True, capture_output=True, env=env)
            times.append(time.perf_counter() - t0)
        reward = statistics.median(times)
        print(f"`bandit reward` wall time {reward * 1000:.1f} ms vs `python -c 'import sqlite3'` "
              f"{baseline * 1000:.1f} ms: ratio {reward / baseline:.2f}x (target <= 3x), median of {args.runs}")


if __name__ == "__main__":
    main()
