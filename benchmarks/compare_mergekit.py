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

The `vocab` recipes merge models with different word-level tokenizers (tokenizer_source
union / base / a model, and the tokenizer: section); their vocabulary rows are compared
token by token, since mergekit numbers the union's new tokens in hash order.

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


def vocab_family(work: Path) -> dict[str, Path]:
    """Three tiny models with different word-level tokenizers: base and v1 share one (16
    rows, 14 tokens), v2 has 12 rows with some of base's words, others of its own and its
    own added token, v3 8 rows with a few of each."""
    from tests.tiny_models import add_word_tokenizer, make_llama, perturb

    out = {k: work / k for k in ("vbase", "v1", "v2", "v3")}
    if not (out["v3"] / "tokenizer.json").exists():
        for folder in out.values():
            shutil.rmtree(folder, ignore_errors=True)
        make_llama(out["vbase"], seed=0, hidden=64, layers=4, vocab=16, heads=4, kv_heads=2)
        add_word_tokenizer(out["vbase"], ["<unk>"] + [f"w{i}" for i in range(12)], ("<|a|>",))
        perturb(out["vbase"], out["v1"], seed=1, scale=0.01)
        perturb(out["vbase"], out["v2"], seed=2, scale=0.01)
        make_llama(out["v2"] / "_", seed=5, hidden=64, layers=4, vocab=12, heads=4, kv_heads=2)
        _take_rows(out["v2"], out["v2"] / "_", 12)
        add_word_tokenizer(out["v2"], ["<unk>"] + [f"w{i}" for i in range(6)] + ["x0", "x1", "x2"], ("<|b|>",))
        perturb(out["vbase"], out["v3"], seed=3, scale=0.01)
        make_llama(out["v3"] / "_", seed=6, hidden=64, layers=4, vocab=8, heads=4, kv_heads=2)
        _take_rows(out["v3"], out["v3"] / "_", 8)
        add_word_tokenizer(out["v3"], ["<unk>", "w0", "w7", "x1", "y0"])
    return out


def _take_rows(folder: Path, donor: Path, rows: int) -> None:
    """folder's weights (a fine-tune of the base) with donor's vocabulary tensors (`rows`
    rows): a model of the same family with another vocabulary."""
    import json

    from safetensors.torch import save_file

    from tests.tiny_models import load_tensors

    tensors, other = load_tensors(folder), load_tensors(donor)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name] = other[name].contiguous()
    for f in folder.glob("*.safetensors"):
        f.unlink()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": rows}))
    shutil.rmtree(donor)


def vocab_recipes(m: dict[str, Path]) -> dict[str, str]:
    b, v1, v2, v3 = (str(m[k]) for k in ("vbase", "v1", "v2", "v3"))
    gta = (f"models: [{{model: {v1}, parameters: {{weight: 0.5, density: 0.5}}}}, "
           f"{{model: {v2}, parameters: {{weight: 0.3, density: 0.7}}}}, "
           f"{{model: {v3}, parameters: {{weight: 0.2, density: 0.3}}}}]\nbase_model: {b}\ndtype: float32\n")
    out = {
        "vocab union ties (3 vocabularies, base)": gta + "merge_method: ties\ntokenizer_source: union\n",
        "vocab union task_arithmetic": gta + "merge_method: task_arithmetic\ntokenizer_source: union\n",
        # No base: the stand-in of a token two of three have is their mean.
        "vocab union linear (no base)": f"models: [{{model: {v1}, parameters: {{weight: 0.5}}}}, "
                                        f"{{model: {v2}, parameters: {{weight: 0.3}}}}, "
                                        f"{{model: {v3}, parameters: {{weight: 0.2}}}}]\nmerge_method: linear\n"
                                        "dtype: float32\ntokenizer_source: union\n",
        "vocab tokenizer_source base (slerp)": f"models: [{{model: {b}}}, {{model: {v2}}}]\nbase_model: {b}\n"
                                               "merge_method: slerp\nparameters: {t: 0.4}\ndtype: float32\n"
                                               "tokenizer_source: base\n",
        "vocab tokenizer_source model (v2)": f"models: [{{model: {v1}, parameters: {{weight: 0.6}}}}, "
                                             f"{{model: {v2}, parameters: {{weight: 0.4}}}}]\nmerge_method: linear\n"
                                             f"dtype: float32\ntokenizer_source: {v2}\n",
        # task_arithmetic: TIES would trim among the identical padding rows, where the two
        # toolkits break threshold ties differently (measured apart).
        "vocab tokenizer: section (tokens, force, pad)": gta + "merge_method: task_arithmetic\n" + textwrap.dedent(f"""\
            tokenizer:
              source: union
              pad_to_multiple_of: 32
              tokens:
                <|new|>: {{source: {{kind: model_token, model: {v2}, token: x1}}}}
                w3: {{source: {{kind: zero}}, force: true}}
                x1: {{source: {v3}}}
                y0: {{source: {{kind: model_token, model: {v1}, token_id: 5}}, force: true}}
            """),
    }
    # In bfloat16 the stand-in means are rounded as mergekit rounds them (linear: TIES in
    # bfloat16 differs by its threshold ties, measured apart).
    out["vocab union linear bfloat16"] = out["vocab union linear (no base)"].replace("dtype: float32", "dtype: bfloat16")
    out = {
        **out,
    }
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
        # modules: the one module 'default', its parameters between the models' and the recipe's
        "modules default (parameter precedence)": f"""
            merge_method: task_arithmetic
            base_model: {b}
            modules:
              default:
                models:
                  - {{model: {a1}, parameters: {{weight: 0.7}}}}
                  - {{model: {a2}}}
                parameters:
                  weight: [{{filter: mlp, value: 0.2}}]
            parameters: {{weight: 0.9, lambda: 0.8}}
            dtype: float32
            """,
        # residual_weight is read by mergekit 0.1.5 and used nowhere: the same model either way
        "slices residual_weight": f"""
            slices:
              - sources: [{{model: {a1}, layer_range: [0, 4]}}, {{model: {a2}, layer_range: [0, 4]}}]
                residual_weight: 0.5
            merge_method: slerp
            base_model: {a1}
            parameters: {{t: 0.3}}
            dtype: float32
            """,
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


def token_order(ours: Path, theirs: Path) -> tuple[list[int], list[int]] | None:
    """Row indices that put both outputs' vocabulary rows in the same token order (mergekit's
    union numbers new tokens in hash order, so rows are compared token by token), or None
    when neither output has a tokenizer.json. Padding rows are compared in place."""
    if not (ours / "tokenizer.json").exists() or not (theirs / "tokenizer.json").exists():
        return None
    from transformers import AutoTokenizer

    a, b = (AutoTokenizer.from_pretrained(f).get_vocab() for f in (ours, theirs))
    if set(a) != set(b):
        raise SystemExit(f"token sets differ: {sorted(set(a) ^ set(b))[:4]}")
    tokens = sorted(b, key=b.get)
    return [a[t] for t in tokens], [b[t] for t in tokens]


def max_rel_error(ours: dict, theirs: dict, order: tuple[list[int], list[int]] | None = None) -> float:
    if set(ours) != set(theirs):
        raise SystemExit(f"tensor names differ: {sorted(set(ours) ^ set(theirs))[:4]}")
    worst = 0.0
    for name, t in theirs.items():
        x, y = ours[name].double(), t.double()
        if x.shape != y.shape:
            raise SystemExit(f"{name}: shape {list(x.shape)} here, {list(y.shape)} in mergekit")
        if order is not None and name.endswith(("embed_tokens.weight", "lm_head.weight")):
            n = len(order[0])
            x = torch_cat(x[order[0]], x[n:])
            y = torch_cat(y[order[1]], y[n:])
        scale = float(y.abs().max()) or 1.0
        worst = max(worst, float((x - y).abs().max()) / scale)
    return worst


def torch_cat(*parts):
    import torch

    return torch.cat(parts)


def l1_ratio(ours: dict, theirs: dict, base: dict) -> float:
    a = sum(float((ours[n].double() - base[n].double()).abs().sum()) for n in base if n in ours)
    b = sum(float((theirs[n].double() - base[n].double()).abs().sum()) for n in base if n in theirs)
    return a / b


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Sum 2+2?"},
                {"role": "assistant", "content": " 4 "}]


def chat_model(work: Path) -> Path:
    """A tiny model whose tokenizer defines bos and eos, which templates print."""
    from tests.tiny_models import add_word_tokenizer, make_llama

    folder = work / "chat"
    if not (folder / "tokenizer.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        make_llama(folder, seed=0, hidden=16, layers=1, vocab=8, heads=2, kv_heads=1)
        add_word_tokenizer(folder, ["<unk>", "<s>", "</s>", "Hi"], bos_token="<s>", eos_token="</s>")
    return folder


def compare_chat_templates(mergekit: str, work: Path, model: Path, env: dict) -> None:
    """Each named template, rendered from simmerge's output and from mergekit's on the same
    conversation (with and without the generation prompt): same text or not."""
    from transformers import AutoTokenizer

    from merging.chat_templates import NAMED_TEMPLATES
    from merging.engine import run_merge
    from merging.recipe import Recipe

    for name in sorted(NAMED_TEMPLATES):
        text = (f"merge_method: linear\nmodels: [{{model: {model}, parameters: {{weight: 1}}}}]\n"
                f"chat_template: {name}\ndtype: float32\n")
        path = work / f"chat-{name}.yml"
        path.write_text(text)
        ours, theirs = work / f"ours-chat-{name}", work / f"mk-chat-{name}"
        for folder in (ours, theirs):
            shutil.rmtree(folder, ignore_errors=True)
        run_merge(Recipe.load(path), ours, device="cpu", progress=False)
        proc = subprocess.run([mergekit, str(path), str(theirs), "--quiet"], capture_output=True, text=True, env=env)
        label = f"chat_template: {name}"
        if proc.returncode != 0:
            print(f"{label:45s} mergekit failed")
            continue
        results = []
        for turns, prompt in ((CONVERSATION, False), (CONVERSATION[1:2], True), (CONVERSATION[1:], False)):
            a, b = (AutoTokenizer.from_pretrained(f).apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)
                    for f in (ours, theirs))
            results.append(a == b)
        print(f"{label:45s} {'same text' if all(results) else 'differs: ' + str(results)}")


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
    all_recipes = {**recipes(models), **vocab_recipes(vocab_family(work / "models"))}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    print(f"{'recipe':45s} {'max rel err':>12s}")
    for name, text in all_recipes.items():
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
            print(f"{name:45s} {max_rel_error(a, b, token_order(ours, theirs)):12.3e}")
    if not args.only or "chat" in args.only:
        compare_chat_templates(args.mergekit, work, chat_model(work / "models"), env)
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
