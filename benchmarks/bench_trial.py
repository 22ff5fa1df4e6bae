"""Trial-merge signals for one request of 8 arms on the tiny zoo: seconds (wall and CPU).

    python benchmarks/bench_trial.py [--zoo DIR] [--pair add,reverse] [--threads 2]

One ordered pair, every default arm: merge in memory, load into the architecture, teacher-
force both experts' reference continuations (64 probes each). The references are computed
first (and cached on disk) so the figure is the per-request cost once the catalog is warm;
their own cost is printed too. Target (#10): ≤ 4 s for the 8 arms on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", default=None)
    ap.add_argument("--pair", default="add,reverse")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from bandit.arms import DEFAULT_ARMS
    from features.trial import TrialRunner
    from zoo.manifest import load_zoo
    from zoo.trial_features import task_probes

    torch.set_num_threads(args.threads)
    z = load_zoo(args.zoo)
    a, b = args.pair.split(",")
    with tempfile.TemporaryDirectory() as cache:
        w0, c0 = time.perf_counter(), time.process_time()
        runner = TrialRunner(z.base, z.expert(a), z.expert(b), task_probes(z, a), task_probes(z, b), device="cpu",
                             cache_dir=cache)
        print(f"references of both experts (computed once per model and probe set): "
              f"{time.perf_counter() - w0:.2f} s wall, {time.process_time() - c0:.2f} s CPU")
        runner.trial("linear", {"weight": 0.5})  # builds the architecture once, as a live service has
        w0, c0 = time.perf_counter(), time.process_time()
        for arm, op, params in DEFAULT_ARMS:
            t = time.perf_counter()
            res = runner.trial(op, params)
            print(f"  {arm:<18} {time.perf_counter() - t:6.3f} s  (merge {res.merge_seconds:.3f} s)  "
                  f"trial_exact {res.features['trial_exact']:.3f}")
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    print(f"{len(DEFAULT_ARMS)} arms: {wall:.2f} s wall, {cpu:.2f} s CPU "
          f"({wall / len(DEFAULT_ARMS):.3f} s per arm; target <= 4 s per request)")


if __name__ == "__main__":
    main()
