"""Merge speed and memory: the streaming engine against the I/O floor and, when installed,
the `mergekit` toolkit on the same YAML recipe.

    python benchmarks/bench_merge.py [--work DIR] [--sizes 220M,90M] [--mergekit PATH/TO/mergekit-yaml]
                                     [--root OTHER/CHECKOUT]

For each model size it makes a bf16 Llama base and three fine-tunes (sharded), measures
the I/O floor (reading every input once and writing the output once), then times
`linear` and `ties` merges of the three on CPU, each in a fresh process so its peak RSS
is its own. With mergekit it runs the same recipe through `mergekit-yaml`, prints our
time and RSS as ratios to it, and compares the two outputs tensor by tensor.

Times are given as wall time and as CPU time (user + system, all threads): on a shared
machine the wall time also counts waiting for a core, the CPU time much less so, so the
ratio to the floor is printed for both. --root measures the `merging` package of another
checkout (e.g. an older commit) with the same checkpoints and floor.

--threads pinned,free runs our merge twice per operator, interleaved: with the engine's
intra-op threads pinned (merging.engine.INTRA_OP_THREADS, the default) and with torch's
own thread count, to show what the pinning does on this machine at its current load.

Not a test: it takes minutes and a few GB of disk. Figures depend on what else runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> (hidden, intermediate, layers, heads); vocab 32000, untied embeddings.
# 117M has the same widest tensors (32000 x 1024) as 220M with a third of the layers: peak
# memory should not change between the two, since the engine holds a few tensors at a time.
SIZES = {
    "220M": (1024, 2816, 12, 16),
    "117M": (1024, 2816, 4, 16),
    "90M": (768, 2048, 6, 12),
    "20M": (256, 688, 4, 4),
}
WEIGHTS = [0.5, 0.3, 0.2]
DENSITY = 0.5


def make_family(folder: Path, size: str) -> dict[str, Path]:
    import torch

    from tests.tiny_models import make_llama, perturb

    hidden, inter, layers, heads = SIZES[size]
    base = folder / "base"
    if not (base / "config.json").exists():
        make_llama(base, seed=0, hidden=hidden, intermediate=inter, layers=layers, heads=heads,
                   kv_heads=heads, vocab=32000, dtype=torch.bfloat16, shard_size="200MB")
    models = {"base": base}
    for i in (1, 2, 3):
        ft = folder / f"ft{i}"
        if not (ft / "config.json").exists():
            shutil.rmtree(ft, ignore_errors=True)
            perturb(base, ft, seed=i, scale=0.002)
        models[f"ft{i}"] = ft
    return models


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def io_floor(inputs: list[Path], out_bytes: int = 0, scratch: Path | None = None) -> tuple[float, float]:
    """Read every input's weight files once and write out_bytes once (fsynced, into scratch)
    in 64 MB blocks; out_bytes 0: read only. Returns (wall seconds, CPU seconds)."""
    block = bytearray(64 << 20)
    view = memoryview(block)
    started = time.perf_counter()
    cpu_started = time.process_time()
    for folder in inputs:
        for f in sorted(folder.glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(view):
                    pass
    if out_bytes:
        with open(scratch, "wb", buffering=0) as fh:
            left = out_bytes
            while left > 0:
                n = min(left, len(block))
                fh.write(view[:n])
                left -= n
            # Synced, as a merge syncs its output before renaming it into place.
            os.fsync(fh.fileno())
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if out_bytes:
        scratch.unlink()
    return seconds, cpu


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float, float, str]:
    """Wall time (s), CPU time (s, user + system) and peak RSS (MB) of one child process,
    and its stdout. CPU time is reported because the machine may be shared: wall time then
    also counts waiting for a core.

    Measured by /usr/bin/time rather than this process's wait4: on Linux a child's peak
    RSS starts from its parent's at fork, and this process grows while comparing outputs."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        full = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", report.name, *cmd]
        proc = subprocess.run(full, capture_output=True, env=env, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        wall, user, system, max_kb = report.read().split()[-4:]
    return float(wall), float(user) + float(system), int(max_kb) / 1024, proc.stdout


OUR_CHILD = """
import sys, json, time
import torch  # started before run_merge's clock: its seconds are the merge alone
sys.path.insert(0, {root!r})
import merging.engine
if {free!r}:
    merging.engine.INTRA_OP_THREADS = None  # torch's own thread count
from merging.recipe import Recipe
from merging.engine import run_merge
recipe = Recipe.load({recipe!r})
cpu = time.process_time()
result = run_merge(recipe, {out!r}, device="cpu", progress=False)
print(json.dumps({{**result.to_dict(), "cpu_seconds": time.process_time() - cpu}}))
"""


def recipe_yaml(op: str, models: dict[str, Path]) -> str:
    from merging.recipe import Recipe

    fts = [models["ft1"], models["ft2"], models["ft3"]]
    if op == "linear":
        recipe = Recipe.from_arm("linear", {"weight": WEIGHTS}, fts, dtype="float32", out_dtype="bfloat16")
    else:
        recipe = Recipe.from_arm("ties", {"weight": WEIGHTS, "density": DENSITY, "normalize": True},
                                 fts, models["base"], dtype="float32", out_dtype="bfloat16")
    return recipe.to_yaml()


def compare(ours: Path, theirs: Path) -> str:
    from tests.tiny_models import load_tensors

    a, b = load_tensors(ours), load_tensors(theirs)
    if set(a) != set(b):
        return f"tensor names differ: {sorted(set(a) ^ set(b))[:3]}"
    total = differ = 0
    worst = 0.0
    for name in a:
        x, y = a[name].float(), b[name].float()
        if x.shape != y.shape:
            return f"{name}: shape {tuple(x.shape)} vs {tuple(y.shape)}"
        total += x.numel()
        neq = x != y
        differ += int(neq.sum())
        if neq.any():
            worst = max(worst, float((x - y).abs().max()))
    return f"{differ}/{total} entries differ ({differ / total:.2e}), largest difference {worst:.3g}"


def compare_ties_sort_order(models: dict[str, Path], theirs: Path) -> str:
    """Our TIES formula with trimming done by a full descending argsort (the tie order a
    sort-based implementation gets among equal magnitudes at the threshold), against
    mergekit's output. Shows whether any difference left is only that tie order."""
    import torch

    from merging import operators as ops
    from tests.tiny_models import load_tensors

    base = load_tensors(models["base"])
    fts = [load_tensors(models[f"ft{i}"]) for i in (1, 2, 3)]
    out = load_tensors(theirs)
    total = differ = 0
    for name, b in base.items():
        b = b.float()
        deltas = []
        for ft in fts:
            d = ft[name].float() - b
            k = int(DENSITY * d.numel())
            keep = torch.zeros(d.numel(), dtype=torch.bool)
            keep[torch.argsort(d.abs().reshape(-1), descending=True)[:k]] = True
            deltas.append(d * keep.view(d.shape))
        merged = (b + ops.ties_combine(deltas, WEIGHTS, True)).to(torch.bfloat16)
        total += merged.numel()
        differ += int(torch.count_nonzero(merged != out[name]))
    return f"{differ}/{total} entries differ"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="Folder for the checkpoints (kept between runs).")
    ap.add_argument("--sizes", default="220M,117M", help=f"Comma-separated, from {', '.join(SIZES)}.")
    ap.add_argument("--ops", default="linear,ties")
    ap.add_argument("--mergekit", default=shutil.which("mergekit-yaml") or "/tmp/mk/bin/mergekit-yaml",
                    help="mergekit-yaml executable (skipped when missing).")
    ap.add_argument("--root", default=str(ROOT), help="Checkout whose merging package is measured.")
    ap.add_argument("--threads", default="pinned",
                    help="Comma-separated variants of our merge: pinned (the engine's default), free (torch's own count).")
    ap.add_argument("--no-tie-order-check", dest="tie_order_check", action="store_false",
                    help="Skip re-running TIES with a full sort's tie order (slow: sorts every tensor).")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)
    have_mergekit = Path(args.mergekit).exists()
    if not have_mergekit:
        print(f"mergekit-yaml not found at {args.mergekit}: measuring our side only")
    rows = []
    for size in args.sizes.split(","):
        models = make_family(work / size, size)
        from merging.checkpoint import Checkpoint

        params = sum(t.numel for t in Checkpoint(models["base"]).tensors.values())
        ft_bytes = folder_bytes(models["ft1"])
        print(f"\n== {size}: ~{params / 1e6:.0f}M parameters, {ft_bytes / 1e6:.0f} MB per checkpoint (bf16, sharded)")
        for op in args.ops.split(","):
            inputs = [models["ft1"], models["ft2"], models["ft3"]] + ([models["base"]] if op != "linear" else [])
            floors = [io_floor(inputs, ft_bytes, work / "floor.bin") for _ in range(2)]
            floor, floor_cpu = min(f[0] for f in floors), min(f[1] for f in floors)
            recipe = work / size / f"{op}.yml"
            recipe.write_text(recipe_yaml(op, models))
            ours_out = work / size / f"ours-{op}"
            line, row = "", {"size": size, "op": op, "floor_s": floor, "floor_cpu_s": floor_cpu}
            for variant in args.threads.split(","):
                shutil.rmtree(ours_out, ignore_errors=True)
                child = OUR_CHILD.format(root=str(Path(args.root).resolve()), recipe=str(recipe), out=str(ours_out),
                                         free=variant == "free")
                t_ours, cpu_ours, rss_ours, stdout = measure([sys.executable, "-c", child])
                # The merge itself, without the interpreter and torch starting up.
                report = json.loads(stdout)
                t_merge, cpu_merge = report["seconds"], report["cpu_seconds"]
                tag = "" if variant == "pinned" else f"_{variant}"
                row.update({f"ours{tag}_s": t_ours, f"ours{tag}_cpu_s": cpu_ours, f"ours{tag}_merge_s": t_merge,
                            f"ours{tag}_merge_cpu_s": cpu_merge, f"ours{tag}_rss_mb": rss_ours,
                            f"load{tag}": os.getloadavg()[0]})
                line += ("" if not line else "\n        ") + (
                    f"{op:7s} I/O floor {floor:5.2f} s wall ({floor_cpu:5.2f} s CPU) | ours[{variant}] {t_ours:6.2f} s wall "
                    f"({cpu_ours:6.2f} s CPU), run_merge {t_merge:6.2f} s wall = {t_merge / floor:5.2f}x floor, "
                    f"{cpu_merge:6.2f} s CPU = {cpu_merge / floor_cpu:5.2f}x floor CPU, peak RSS {rss_ours:5.0f} MB, "
                    f"load {os.getloadavg()[0]:.1f}")
            if have_mergekit:
                theirs_out = work / size / f"mergekit-{op}"
                shutil.rmtree(theirs_out, ignore_errors=True)
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
                t_mk, cpu_mk, rss_mk, _ = measure([args.mergekit, str(recipe), str(theirs_out)], env=env)
                row.update(mergekit_s=t_mk, mergekit_cpu_s=cpu_mk, mergekit_rss_mb=rss_mk,
                           match=compare(ours_out, theirs_out))
                line += f"\n        mergekit {t_mk:6.2f} s wall ({cpu_mk:6.2f} s CPU), peak RSS {rss_mk:5.0f} MB"
                for variant in args.threads.split(","):
                    tag = "" if variant == "pinned" else f"_{variant}"
                    line += (f"\n        ratios ours[{variant}]/mergekit: wall {row[f'ours{tag}_s'] / t_mk:4.2f}, "
                             f"CPU {row[f'ours{tag}_cpu_s'] / cpu_mk:4.2f}, RSS {row[f'ours{tag}_rss_mb'] / rss_mk:4.2f}")
                line += f"\n        outputs: {row['match']}"
                if op == "ties" and args.tie_order_check:
                    row["match_with_sort_tie_order"] = compare_ties_sort_order(models, theirs_out)
                    line += f"\n        with a full sort's tie order at the trim threshold: {row['match_with_sort_tie_order']}"
                shutil.rmtree(theirs_out, ignore_errors=True)
            shutil.rmtree(ours_out, ignore_errors=True)
            print(line, flush=True)
            rows.append(row)
    print("\n" + json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
