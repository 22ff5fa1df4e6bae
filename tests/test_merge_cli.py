"""`bandit merge` and `bandit operators` through click's CliRunner."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from cli import main
from merging.recipe import Recipe
from tests.tiny_models import load_tensors, make_llama, perturb

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-zoo")
    base = make_llama(d / "base", seed=0)
    return {"base": base, "ft1": perturb(base, d / "ft1", seed=1), "ft2": perturb(base, d / "ft2", seed=2)}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_merge_with_operator_and_params(zoo, tmp_path):
    out = tmp_path / "m"
    r = invoke("merge", "--operator", "ties", "--base", zoo["base"], "--model", zoo["ft1"], "--model", zoo["ft2"],
               "--param", "weight=0.7,0.3", "--param", "density=0.5", "--out", out, "--shard-size", "20KB")
    assert r.exit_code == 0, r.output
    assert "merged" in r.stdout and "with ties" in r.stdout
    recipe = Recipe.load(out / "merge_recipe.json")
    assert recipe.resolve().params["weight"] == [0.7, 0.3]
    assert (out / "model.safetensors.index.json").exists()


def test_merge_json_output(zoo, tmp_path):
    r = invoke("merge", "--operator", "linear", "--model", zoo["ft1"], "--model", zoo["ft2"],
               "--param", "weight=1,0", "--out", tmp_path / "m", "--json", "--out-dtype", "bfloat16")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["operator"] == "linear" and data["shards"] == 1 and data["device"] == "cpu"
    got, want = load_tensors(tmp_path / "m"), load_tensors(zoo["ft1"])
    assert all(torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want)


def test_merge_from_yaml_recipe(zoo, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"merge_method: slerp\nbase_model: {zoo['base']}\n"
        f"models:\n  - model: {zoo['base']}\n  - model: {zoo['ft1']}\n"
        "parameters:\n  t: 0.25\ndtype: float32\n"
    )
    r = invoke("merge", "--recipe", recipe, "--out", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    written = Recipe.load(tmp_path / "m" / "merge_recipe.yaml")
    assert written.operator == "slerp" and written.params == {"t": 0.25}


def test_merge_multi_document_recipe_and_bad_key(zoo, tmp_path):
    recipe = tmp_path / "multi.yaml"
    recipe.write_text(
        f"name: half\nmerge_method: linear\nmodels: [{{model: {zoo['ft1']}}}, {{model: {zoo['ft2']}}}]\n---\n"
        f"merge_method: slerp\nbase_model: {zoo['base']}\nmodels: [{{model: half}}]\nparameters: {{t: 0.5}}\n")
    r = invoke("merge", "--recipe", recipe, "--out", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["operator"] == "slerp"
    assert (tmp_path / "m" / "mergekit_config.yml").is_file() and (tmp_path / "m" / "README.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "multi.yaml"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"merge_method: linear\nmodels: [{{model: {zoo['ft1']}, paramters: {{weight: 1}}}}]\n")
    r = invoke("merge", "--recipe", bad, "--out", tmp_path / "n")
    assert r.exit_code == 1 and "unknown key 'paramters'" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "n").exists()


def test_merge_recipe_seed_override(zoo, tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(Recipe.from_arm("dare_ties", {"density": 0.5}, [zoo["ft1"], zoo["ft2"]], zoo["base"]).to_json())
    assert invoke("merge", "--recipe", recipe, "--out", tmp_path / "a", "--seed", "4").exit_code == 0
    assert Recipe.load(tmp_path / "a" / "merge_recipe.json").seed == 4


def test_operators_lists_params_and_defaults():
    r = invoke("operators", "--json")
    assert r.exit_code == 0
    specs = {s["name"]: s for s in json.loads(r.stdout)}
    assert len(specs) >= 10
    density = next(p for p in specs["ties"]["params"] if p["name"] == "density")
    assert density["scope"] == "per-model" and density["default"] == 1.0
    text = invoke("operators").stdout
    assert "model_stock" in text and "epsilon=0.15" in text


def test_plugin_operator_from_the_command_line(zoo, tmp_path):
    r = invoke("merge", "--plugin", "tests.test_operators:scaled_mean", "--operator", "test_scaled_mean",
               "--model", zoo["ft1"], "--param", "scale=1.0", "--out", tmp_path / "m")
    assert r.exit_code == 0, r.output
    assert "test_scaled_mean" in invoke("operators", "--plugin", "tests.test_operators:scaled_mean").stdout


def _truncated(zoo, tmp_path):
    bad = perturb(zoo["base"], tmp_path / "bad", seed=3)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return bad


BAD = {
    "missing model": (lambda z, t: ["--operator", "ties", "--base", z["base"], "--model", t / "nope"], "no such folder"),
    "truncated": (lambda z, t: ["--operator", "ties", "--base", z["base"], "--model", _truncated(z, t)], "truncated"),
    "unknown operator": (lambda z, t: ["--operator", "tie", "--base", z["base"], "--model", z["ft1"]], "unknown operator 'tie'"),
    "unknown param": (lambda z, t: ["--operator", "ties", "--base", z["base"], "--model", z["ft1"], "--param", "alpha=1"],
                      "unknown parameter 'alpha'"),
    "bad value": (lambda z, t: ["--operator", "ties", "--base", z["base"], "--model", z["ft1"], "--param", "density=2"],
                  "density must be <= 1.0"),
    "list length": (lambda z, t: ["--operator", "ties", "--base", z["base"], "--model", z["ft1"], "--param", "weight=1,2"],
                    "weight lists 2 value(s) for 1 model(s)"),
    "no base": (lambda z, t: ["--operator", "ties", "--model", z["ft1"]], "needs a base model"),
    "shape mismatch": (lambda z, t: ["--operator", "linear", "--model", z["ft1"], "--model",
                                     make_llama(t / "wide", seed=1, vocab=80)], "allow-vocab-mismatch"),
    "bad dtype": (lambda z, t: ["--operator", "linear", "--model", z["ft1"], "--out-dtype", "int3"], "unknown out_dtype"),
    "bad device": (lambda z, t: ["--operator", "linear", "--model", z["ft1"], "--device", "gpu"], "unknown device"),
    "missing recipe": (lambda z, t: ["--recipe", t / "none.yaml"], "cannot read recipe"),
    "bad plugin": (lambda z, t: ["--plugin", "nosuchmod_q:f", "--operator", "linear", "--model", z["ft1"]], "cannot import"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_exit_1_and_no_folder(zoo, tmp_path, case):
    make_args, message = BAD[case]
    out = tmp_path / "m"
    r = invoke("merge", *make_args(zoo, tmp_path), "--out", out)
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]


def test_output_folder_that_exists_is_kept(zoo, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "x").write_text("keep")
    r = invoke("merge", "--operator", "linear", "--model", zoo["ft1"], "--out", out)
    assert r.exit_code == 1 and "already exists" in r.stderr
    assert (out / "x").read_text() == "keep"


@pytest.mark.parametrize("args", [
    ["--out", "x"],
    ["--operator", "ties", "--out", "x"],
    ["--recipe", "r.yaml", "--operator", "ties", "--out", "x"],
])
def test_usage_errors_exit_2(args):
    assert invoke("merge", *args).exit_code == 2
