"""Features for every pair of a catalog: one pass per checkpoint against one pass per pair.

Structural: a base and 12 Llama-shaped fine-tunes (default `--size 100m`: ~99M parameters,
~200 MB each in bf16) are written to local disk (a temporary folder, deleted afterwards unless
--keep). Then, each in a fresh process so that its peak RSS is its own, files warm in the page
cache for all three:
  - "read": every tensor of the 13 checkpoints read once (the floor any method pays);
  - "one pass": `features.structural_all.scan_catalog`, all 132 ordered pairs;
  - "pairwise": `features.structural.structural_features` once per unordered pair (the (B, A)
    side by `features.order.reverse`, as the service did), 66 passes over three checkpoints.
Reported: seconds, bytes read, peak RSS, the ratio one pass / pairwise (target <= 0.15), peak
RSS of the one pass (target <= 1.5 GB), and the largest difference between the two (<= 1e-9).

Functional: 12 tiny fine-tunes (4 layers, hidden 128, vocab 64, like the zoo's) on the
built-in probes: `functional_all_pairs` (one load per model, outputs cached) against
`functional_features(..., both_orders=True)` per unordered pair (three loads each): model
loads, seconds, and a second all-pairs call served from the cache.

    python benchmarks/bench_catalog.py [--size 100m] [--models 12] [--workdir DIR] [--keep]
                                       [--skip-pairwise] [--skip-functional]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage: ru_maxrss survives exec and
    would report the parent's peak (which held a generated shard) for a fresh child."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, workdir: Path) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch

    from features.order import reverse
    from features.structural import structural_features
    from features.structural_all import scan_catalog
    from merging.checkpoint import Checkpoint

    torch.set_num_threads(1)
    catalog = json.loads((workdir / "catalog.json").read_text())
    base, models = catalog["base"], catalog["models"]
    names = list(models)
    t0, c0 = time.perf_counter(), time.process_time()
    results = {}
    if kind == "read":
        read = 0
        for folder in [base, *models.values()]:
            with Checkpoint(folder) as ck:
                for name in ck.tensors:
                    t = ck.tensor(name)
                    read += t.numel() * t.element_size()
                    del t
    elif kind == "onepass":
        scan = scan_catalog(base, models, device="cpu")
        read = scan.bytes_read
        results = {f"{a}|{b}": v for (a, b), v in scan.all_pairs().items()}
    elif kind == "pairwise":
        read = 0
        size = sum(Checkpoint(f).total_bytes for f in [base, *models.values()]) // (len(models) + 1)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ab = structural_features(base, models[a], models[b], device="cpu")
                results[f"{a}|{b}"], results[f"{b}|{a}"] = ab, reverse(ab)
                read += 3 * size
    else:
        raise SystemExit(f"unknown measurement {kind}")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if results:
        (workdir / f"results-{kind}.json").write_text(json.dumps(results))
    print(json.dumps({"kind": kind, "seconds": seconds, "cpu_seconds": cpu, "bytes_read": read,
                      "peak_rss_mb": _peak_rss_mb()}))


def measure(kind: str, workdir: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--workdir", str(workdir)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def structural(args, workdir: Path) -> None:
    from synthetic_checkpoints import folder_bytes, parameter_count, write_catalog

    t0 = time.perf_counter()
    base, models = write_catalog(workdir / "ckpt", args.size, args.models, dtype="bfloat16")
    (workdir / "catalog.json").write_text(json.dumps({"base": str(base), "models": {k: str(v) for k, v in models.items()}}))
    each = folder_bytes([base])
    print(f"catalog: base + {args.models} fine-tunes, {parameter_count(args.size) / 1e6:.0f}M parameters, "
          f"{each / 1e6:.0f} MB each (bf16), written in {time.perf_counter() - t0:.0f} s")
    rows = {kind: measure(kind, workdir) for kind in ("read", "onepass") + (() if args.skip_pairwise else ("pairwise",))}
    print(f"\n{'structural, all pairs':<24} {'seconds':>9} {'CPU s':>9} {'GB read':>9} {'peak RSS MB':>12}")
    passes = args.models * (args.models - 1) // 2
    for kind, label in (("read", "read every tensor once"), ("onepass", "one pass"), ("pairwise", f"pairwise ({passes} passes)")):
        if kind in rows:
            r = rows[kind]
            print(f"{label:<24} {r['seconds']:>9.1f} {r['cpu_seconds']:>9.1f} {r['bytes_read'] / 1e9:>9.2f} "
                  f"{r['peak_rss_mb']:>12.0f}")
    one = rows["onepass"]
    print(f"one pass / read once: {one['seconds'] / rows['read']['seconds']:.2f}")
    print(f"peak RSS of the one pass: {one['peak_rss_mb'] / 1024:.2f} GB (target <= 1.5)")
    if "pairwise" in rows:
        pw = rows["pairwise"]
        print(f"one pass / pairwise, time: {one['seconds'] / pw['seconds']:.3f} wall, "
              f"{one['cpu_seconds'] / pw['cpu_seconds']:.3f} CPU (target <= 0.15); "
              f"bytes read: {one['bytes_read'] / pw['bytes_read']:.3f}")
        a = json.loads((workdir / "results-onepass.json").read_text())
        b = json.loads((workdir / "results-pairwise.json").read_text())
        worst = max(abs(a[p][f] - b[p][f]) for p in b for f in b[p])
        print(f"largest difference one pass vs pairwise over {len(b)} ordered pairs: {worst:.2e}")


def functional(args, workdir: Path) -> None:
    import torch

    import feature_models as fm
    from features.functional import functional_features
    from features.functional_all import functional_all_pairs
    from features.probe_outputs import ProbeOutputCache

    torch.set_num_threads(1)
    root = workdir / "tiny"
    base = fm.make_base(root / "base", seed=0, layers=4, hidden=128)
    models = {f"t{i:02d}": str(fm.make_finetune(base, root / f"t{i:02d}", seed=i, scale=0.3, share=0.3))
              for i in range(1, args.models + 1)}
    cache = ProbeOutputCache(workdir / "cache")
    t0 = time.perf_counter()
    first = functional_all_pairs(str(base), models, None, device="cpu", cache=cache)
    t_all = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = functional_all_pairs(str(base), models, None, device="cpu", cache=cache)
    t_again = time.perf_counter() - t0
    names = list(models)
    t0 = time.perf_counter()
    loads = 0
    worst = 0.0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ab, ba = functional_features(str(base), models[a], models[b], None, device="cpu", both_orders=True)
            loads += 3
            for pair, want in (((a, b), ab), ((b, a), ba)):
                worst = max(worst, max(abs(first.pairs[pair][k] - v) for k, v in want.items()))
    t_pairwise = time.perf_counter() - t0
    print(f"\n{'functional, all pairs':<30} {'model loads':>11} {'seconds':>9}")
    print(f"{'one load per model':<30} {first.model_loads:>11} {t_all:>9.1f}")
    print(f"{'again, from the cache':<30} {again.model_loads:>11} {t_again:>9.1f}")
    print(f"{'pairwise (both orders per pair)':<30} {loads:>11} {t_pairwise:>9.1f}")
    print(f"one load per model / pairwise, time: {t_all / t_pairwise:.3f}; "
          f"largest difference: {worst:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100m", help="tiny, 100m, 1b or 7b (see synthetic_checkpoints.py)")
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--skip-pairwise", action="store_true")
    parser.add_argument("--skip-functional", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workdir)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_catalog_", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        structural(args, workdir)
        if not args.skip_functional:
            functional(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
