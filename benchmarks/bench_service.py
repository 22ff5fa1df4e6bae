"""Service speed: in-process propose+reward cycles per second, `bandit reward` start-up,
and propose latency against the length of the log, for every policy, and `stats` latency
against the length of the log.

    python benchmarks/bench_service.py [--cycles 3000] [--runs 15] [--large 100000]
        [--policies linucb,lints,egreedy,hybrid,vw,random,fixed] [--skip-cycles] [--skip-reward]
        [--skip-latency] [--skip-stats]

Prints figures and ratios; targets: ≥ 2,000 cycles/s with d = 32 features and K = 20
arms on a file database, `bandit reward` wall time ≤ 3× `python -c "import sqlite3"`,
propose latency at --large logged rewards ≤ 1.5× that at 100, per policy, and `stats`
latency (a new process's, and a long-lived one's as the log grows) at --large ≤ 1.5× at 100
(the dashboard page's latency is printed beside it).
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


LATENCY_POLICIES = {
    "pooled": {}, "linucb": {}, "lints": {}, "egreedy": {}, "hybrid": {}, "vw": {}, "random": {},
    "fixed": {"arm": "ties", "epsilon": 0.05},
}


def logged_database(db: str, n_rewards: int, seed: int = 0) -> None:
    """A database holding `n_rewards` rewarded proposals, written in bulk (as a long-lived
    service would have logged them: 4 features, the 8 default arms, uniform pmf), with its
    ridge posteriors rebuilt from them."""
    import json
    import random

    from bandit.service import Service

    svc = Service(db)
    arms = [a.name for a in svc.arms()]
    rng = random.Random(seed)
    store = svc.store
    with store.transaction():
        for i in range(n_rewards):
            ctx = {f"f{j}": rng.uniform(-1, 1) for j in range(4)}
            chosen = rng.randrange(len(arms))
            event = {"created_at": 0.0, "task": "bench", "policy": "linucb", "policy_params": {},
                     "candidates": None, "contexts": [ctx], "actions": [{"arm": a, "candidate": 0} for a in arms],
                     "pmf": [1 / len(arms)] * len(arms), "chosen": chosen, "arm": arms[chosen],
                     "model_a": None, "model_b": None, "prob": 1 / len(arms), "predicted": 0.0, "bonus": 0.0,
                     "seed": i, "recipe": json.loads("{}")}
            event_id = store.insert_event(event)
            store.insert_reward(event_id, rng.uniform(0, 1))
        store.ensure_task("bench")
    svc.rebuild()
    store.close()


def propose_latency(db: str, policy: str, params: dict, proposals: int) -> tuple[float, float, float]:
    """(seconds to switch to the policy, seconds of a new process's first propose, median
    seconds of the following in-process proposes)."""
    import random

    from bandit.service import Service

    svc = Service(db)
    t0 = time.perf_counter()
    svc.set_policy(policy, params)
    switch = time.perf_counter() - t0
    svc.store.close()
    other = Service(db)  # another process: loads what the switch prepared
    rng = random.Random(1)
    ctx = {f"f{j}": rng.uniform(-1, 1) for j in range(4)}
    t0 = time.perf_counter()
    other.propose("bench", ctx, seed=0)
    first = time.perf_counter() - t0
    times = []
    for i in range(proposals):
        ctx = {f"f{j}": rng.uniform(-1, 1) for j in range(4)}
        t0 = time.perf_counter()
        other.propose("bench", ctx, seed=i)
        times.append(time.perf_counter() - t0)
    other.store.close()
    return switch, first, statistics.median(times)


def latency_table(tmp: str, large: int, policies: list[str], proposals: int) -> None:
    dbs = {}
    for n in (100, large):
        dbs[n] = os.path.join(tmp, f"log{n}.db")
        t0 = time.perf_counter()
        logged_database(dbs[n], n)
        print(f"logged {n:,} rewards in bulk and rebuilt the posteriors: {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"propose latency, median of {proposals} in-process proposes after the switch "
          f"(switch = `policy set` time, first = a new process's first propose)")
    print(f"{'policy':<8} {'at 100':>10} {'at ' + format(large, ','):>12} {'ratio':>7}   "
          f"{'switch 100':>10} {'switch ' + format(large, ','):>14} {'first ' + format(large, ','):>13}")
    for name in policies:
        small = propose_latency(dbs[100], name, LATENCY_POLICIES[name], proposals)
        big = propose_latency(dbs[large], name, LATENCY_POLICIES[name], proposals)
        print(f"{name:<8} {small[2] * 1000:>8.2f}ms {big[2] * 1000:>10.2f}ms {big[2] / small[2]:>6.2f}x   "
              f"{small[0]:>9.2f}s {big[0]:>13.2f}s {big[1]:>12.3f}s  (target ratio <= 1.5)", flush=True)


def stats_latency(db: str, calls: int) -> tuple[float, float, float, float]:
    """(seconds of the first stats ever computed on this log, seconds of a new process's
    first stats, median seconds of a long-lived process's stats with one new rewarded
    proposal between calls, and median seconds of the server's dashboard page (its data
    and HTML, views kept between refreshes as the server keeps them) in the same loop)."""
    import random

    from bandit.server.dashboard import collect, render_page
    from bandit.service import Service
    from bandit.service.monitor import ArmShares, RewardCurves

    svc = Service(db)
    t0 = time.perf_counter()
    svc.stats()
    first_ever = time.perf_counter() - t0
    svc.store.close()
    firsts = []
    for _ in range(7):  # a new process's first call, from the stored summary (median of 7)
        other = Service(db)
        t0 = time.perf_counter()
        other.stats()
        firsts.append(time.perf_counter() - t0)
        other.store.close()
    new_process = statistics.median(firsts)
    other = Service(db)
    rng = random.Random(2)
    curves, shares = RewardCurves(), ArmShares()
    collect(other, curves, shares)  # the server's first refresh reads the log once
    times, pages = [], []
    for i in range(calls):
        p = other.propose("bench", {f"f{j}": rng.uniform(-1, 1) for j in range(4)}, seed=i)
        other.reward(p.event_id, rng.uniform(0, 1))
        t0 = time.perf_counter()
        other.stats()
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        render_page(collect(other, curves, shares))
        pages.append(time.perf_counter() - t0)
    other.store.close()
    return first_ever, new_process, statistics.median(times), statistics.median(pages)


def stats_table(tmp: str, large: int, calls: int) -> None:
    dbs = {}
    for n in (100, large):
        dbs[n] = os.path.join(tmp, f"stats{n}.db")
        logged_database(dbs[n], n)
    small, big = stats_latency(dbs[100], calls), stats_latency(dbs[large], calls)
    print(f"stats latency at 100 vs {large:,} logged rewards (target ratio <= 1.5):")
    for i, what in enumerate(("first ever on the log", "a new process's first (med. 7)", f"long-lived, median of {calls}",
                              "dashboard page (data + HTML)")):
        print(f"  {what:<31} {small[i] * 1000:>9.2f} ms {big[i] * 1000:>10.2f} ms  ratio {big[i] / small[i]:>7.2f}x",
              flush=True)


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
    ap.add_argument("--large", type=int, default=100_000, help="Logged rewards of the large database.")
    ap.add_argument("--proposals", type=int, default=200)
    ap.add_argument("--policies", default=",".join(LATENCY_POLICIES))
    ap.add_argument("--skip-cycles", action="store_true")
    ap.add_argument("--skip-reward", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-stats", action="store_true")
    ap.add_argument("--stats-calls", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        if not args.skip_cycles:
            rate = cycles_per_second(db, args.cycles)
            print(f"in-process propose+reward, d=32 features, K=20 arms, file database: {rate:,.0f} cycles/s "
                  f"(target >= 2,000: {rate / 2000:.2f}x of target)", flush=True)
        if not args.skip_latency:
            latency_table(tmp, args.large, [p for p in args.policies.split(",") if p], args.proposals)
        if not args.skip_stats:
            stats_table(tmp, args.large, args.stats_calls)
        if args.skip_reward:
            return

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
