"""simmerge against mergekit on the same recipes: max relative error per recipe.

    python benchmarks/compare_mergekit.py [--mergekit /tmp/mk/bin/mergekit-yaml] [--work DIR]

Builds tiny Llama checkpoints (a base and three fine-tunes, float32), writes one recipe
per method and feature (mergekit's published examples adapted to these paths among
them), merges each with simmerge (`run_merge`) and with `mergekit-yaml`, and prints per
recipe the largest |ours - theirs| / max|theirs| over all tensors. Randomised methods
(DARE, DELLA) draw different masks in each toolkit, so they are compared at density 1
(deterministic) and, at density 0.5, by the ratio of the merged deltas' L1 norms (their
rescale keeps it). Finally a recipe written by simmerge (mergekit_config.yml of an
output) is run by mergekit and compared with simmerge's own output.

mergekit is never a dependency: install it in a separate venv to run this.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def family(work: Path) -> dict[str, Path]:
    from tests.tiny_models import make_llama, perturb

    base = work / "base"
    if not (base / "config.json").exists():
        make_llama(base, seed=0, hidden=64, layers=4, vocab=128, heads=4, kv_heads=2)
    out = {"base": base}
    for i in (1, 2, 3):
        ft = work / f"ft{i}"
        if not (ft / "config.json").exists():
            perturb(base, ft, seed=i, scale=0.01)
        out[f"ft{i}"] = ft
    return out


def recipes(m: dict[str, Path]) -> dict[str, str]:
    b, a1, a2, a3 = (str(m[k]) for k in ("base", "ft1", "ft2", "ft3"))
    three = f"""
        models:
          - model: {a1}
            parameters: {{weight: 0.5, density: 0.5}}
          - model: {a2}
            parameters: {{weight: 0.3, density: 0.7}}
          - model: {a3}
            parameters: {{weight: 0.2, density: 0.3}}
        base_model: {b}
        dtype: float32
    """
    gta = lambda method, extra="": textwrap.dedent(three) + f"merge_method: {method}\n" + extra
    pair = f"models: [{{model: {a1}}}, {{model: {a2}}}]\nbase_model: {b}\ndtype: float32\n"
    out = {
        # mergekit's examples/linear.yml, paths adapted
        "example linear (float16)": f"""
            models:
              - model: {a1}
                parameters: {{weight: 1.0}}
              - model: {a2}
                parameters: {{weight: 0.3}}
              - model: {a3}
                parameters: {{weight: 0.5}}
            merge_method: linear
            dtype: float16
            """,
        # examples/gradient-slerp.yml ('filter' as mergekit 0.1.5 spells it)
        "example gradient-slerp (float16)": f"""
            slices:
              - sources:
                  - model: {a1}
                    layer_range: [0, 4]
                  - model: {a2}
                    layer_range: [0, 4]
            merge_method: slerp
            base_model: {a1}
            parameters:
              t:
                - filter: self_attn
                  value: [0, 0.5, 0.3, 0.7, 1]
                - filter: mlp
                  value: [1, 0.5, 0.7, 0.3, 0]
                - value: 0.5
            dtype: float16
            """,
        # examples/orcamini-platy-44layer.yml: a passthrough frankenmerge, 4+4 -> 6 layers
        "example passthrough slices": f"""
            slices:
              - sources: [{{model: {a1}, layer_range: [0, 3]}}]
              - sources: [{{model: {a2}, layer_range: [1, 4]}}]
            merge_method: passthrough
            dtype: float32
            """,
        # examples/arcee_fusion.yml
        "example arcee_fusion": f"models: [{{model: {a1}}}, {{model: {a2}}}]\nmerge_method: arcee_fusion\n"
                                f"base_model: {a1}\ndtype: float32\n",
        "task_arithmetic": gta("task_arithmetic", "parameters: {lambda: 0.9}\n"),
        "ties": gta("ties"),
        "ties normalize false, rescale": gta("ties", "parameters: {normalize: false, rescale: true}\n"),
        "breadcrumbs": gta("breadcrumbs", "parameters: {gamma: 0.05}\n"),
        "breadcrumbs_ties (per-model gamma)": gta("breadcrumbs_ties").replace(
            "density: 0.5}", "density: 0.5, gamma: 0.1}"),
        "breadcrumbs density+gamma>1": gta("breadcrumbs", "parameters: {gamma: 0.6}\n"),
        "dare_ties density 1": gta("dare_ties").replace("density: 0.7", "density: 1.0").replace(
            "density: 0.5", "density: 1.0").replace("density: 0.3", "density: 1.0"),
        "della density 1": gta("della").replace("density: 0.7", "density: 1.0").replace(
            "density: 0.5", "density: 1.0").replace("density: 0.3", "density: 1.0"),
        "task_arithmetic gradient weight + filter": f"""
            models:
              - model: {a1}
                parameters:
                  weight: [1.0, 0.2]
              - model: {a2}
                parameters:
                  weight: [{{filter: mlp, value: 0.8}}, {{value: [0.1, 0.5, 0.3]}}]
            base_model: {b}
            merge_method: task_arithmetic
            dtype: float32
            """,
        "model_stock": f"models: [{{model: {a1}}}, {{model: {a2}}}, {{model: {a3}}}]\nbase_model: {b}\n"
                       "merge_method: model_stock\ndtype: float32\n",
        "model_stock filter_wise": f"models: [{{model: {a1}}}, {{model: {a2}}}, {{model: {a3}}}]\nbase_model: {b}\n"
                                   "merge_method: model_stock\nparameters: {filter_wise: true}\ndtype: float32\n",
        "sce": f"models: [{{model: {a1}}}, {{model: {a2}}}, {{model: {a3}}}]\nbase_model: {b}\n"
               "merge_method: sce\ndtype: float32\n",
        "sce select_topk 0.3": f"models: [{{model: {a1}}}, {{model: {a2}}}, {{model: {a3}}}]\nbase_model: {b}\n"
                               "merge_method: sce\nparameters: {select_topk: 0.3}\ndtype: float32\n",
        "nearswap": f"models: [{{model: {a1}}}, {{model: {a2}}}]\nbase_model: {a1}\nmerge_method: nearswap\n"
                    "parameters: {t: 0.005}\ndtype: float32\n",
        "nuslerp": f"models: [{{model: {a1}, parameters: {{weight: 0.3}}}}, {{model: {a2}, parameters: {{weight: 0.7}}}}]\n"
                   "merge_method: nuslerp\ndtype: float32\n",
        "nuslerp with base, row-wise": f"models: [{{model: {a1}, parameters: {{weight: 1}}}}, "
                                       f"{{model: {a2}, parameters: {{weight: 1}}}}]\nbase_model: {b}\n"
                                       "merge_method: nuslerp\nparameters: {nuslerp_flatten: false, nuslerp_row_wise: true}\n"
                                       "dtype: float32\n",
        "multislerp": f"models: [{{model: {a1}, parameters: {{weight: 0.2}}}}, {{model: {a2}, parameters: {{weight: 0.3}}}}, "
                      f"{{model: {a3}, parameters: {{weight: 0.5}}}}]\nbase_model: {b}\nmerge_method: multislerp\n"
                      "dtype: float32\n",
        "karcher": f"models: [{{model: {a1}}}, {{model: {a2}}}, {{model: {a3}}}]\nmerge_method: karcher\ndtype: float32\n",
        "slerp": pair + "merge_method: slerp\nparameters: {t: 0.3}\n".replace("{a1}", a1),
        "linear out_dtype bfloat16": f"models: [{{model: {a1}, parameters: {{weight: 0.6}}}}, "
                                     f"{{model: {a2}, parameters: {{weight: 0.4}}}}]\nmerge_method: linear\n"
                                     "dtype: float32\nout_dtype: bfloat16\n",
    }
    out["slerp"] = f"models: [{{model: {a1}}}, {{model: {a2}}}]\nbase_model: {a1}\nmerge_method: slerp\n" \
                   "parameters: {t: 0.3}\ndtype: float32\n"
    random_ones = {f"{m} density 0.5 (L1 ratio)": gta(m).replace("density: 0.7", "density: 0.5").replace(
        "density: 0.3", "density: 0.5") for m in ("dare_ties", "dare_linear", "della", "della_linear")}
    return {k: textwrap.dedent(v) for k, v in {**out, **random_ones}.items()}


def load(folder: Path) -> dict:
    from tests.tiny_models import load_tensors

    return load_tensors(folder)


def max_rel_error(ours: dict, theirs: dict) -> float:
    if set(ours) != set(theirs):
        raise SystemExit(f"tensor names differ: {sorted(set(ours) ^ set(theirs))[:4]}")
    worst = 0.0
    for name, t in theirs.items():
        x, y = ours[name].double(), t.double()
        scale = float(y.abs().max()) or 1.0
        worst = max(worst, float((x - y).abs().max()) / scale)
    return worst


def l1_ratio(ours: dict, theirs: dict, base: dict) -> float:
    a = sum(float((ours[n].double() - base[n].double()).abs().sum()) for n in base if n in ours)
    b = sum(float((theirs[n].double() - base[n].double()).abs().sum()) for n in base if n in theirs)
    return a / b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mergekit", default=shutil.which("mergekit-yaml") or "/tmp/mk/bin/mergekit-yaml")
    ap.add_argument("--work", default=None)
    ap.add_argument("--only", default=None, help="Run the recipes whose name contains this.")
    args = ap.parse_args()
    if not Path(args.mergekit).exists():
        raise SystemExit(f"mergekit-yaml not found at {args.mergekit} (install mergekit in a separate venv)")
    import torch

    from merging.engine import run_merge
    from merging.output import MERGEKIT_CONFIG
    from merging.recipe import Recipe

    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="compare-mergekit-"))
    work.mkdir(parents=True, exist_ok=True)
    models = family(work / "models")
    base = load(models["base"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    print(f"{'recipe':45s} {'max rel err':>12s}")
    for name, text in recipes(models).items():
        if args.only and args.only not in name:
            continue
        slug = "".join(c if c.isalnum() else "_" for c in name)
        path = work / f"{slug}.yml"
        path.write_text(text)
        ours, theirs = work / f"ours-{slug}", work / f"mk-{slug}"
        for folder in (ours, theirs):
            shutil.rmtree(folder, ignore_errors=True)
        try:
            run_merge(Recipe.load(path), ours, device="cpu", progress=False)
        except Exception as e:  # report and go on: one recipe's failure is a finding
            print(f"{name:45s} simmerge failed: {e}")
            continue
        proc = subprocess.run([args.mergekit, str(path), str(theirs), "--quiet"], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"{name:45s} mergekit failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}")
            continue
        a, b = load(ours), load(theirs)
        if "L1 ratio" in name:
            print(f"{name:45s} L1(ours delta) / L1(mergekit delta) = {l1_ratio(a, b, base):.4f}")
        else:
            print(f"{name:45s} {max_rel_error(a, b):12.3e}")
    # A recipe written by simmerge, run by mergekit.
    recipe = Recipe.from_arm("ties", {"weight": [0.6, 0.4], "density": 0.5}, [models["ft1"], models["ft2"]],
                             models["base"], dtype="float32")
    ours, theirs = work / "ours-roundtrip", work / "mk-roundtrip"
    for folder in (ours, theirs):
        shutil.rmtree(folder, ignore_errors=True)
    run_merge(recipe, ours, device="cpu", progress=False)
    proc = subprocess.run([args.mergekit, str(ours / MERGEKIT_CONFIG), str(theirs), "--quiet"], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        print(f"{'simmerge-written mergekit_config.yml':45s} mergekit failed: {proc.stderr.strip()[-300:]}")
    else:
        print(f"{'simmerge-written mergekit_config.yml':45s} {max_rel_error(load(ours), load(theirs)):12.3e}")


if __name__ == "__main__":
    main()
