"""The streaming engine on tiny Llama checkpoints built here."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

from merging import operators as ops
from merging.checkpoint import Checkpoint
from merging.engine import RECIPE_JSON, RECIPE_YAML, run_merge
from merging.errors import MergeError
from merging.recipe import Recipe
from merging.registry import OperatorParams, Param, merge_operator
from tests.tiny_models import load_tensors, make_llama, perturb

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    base = make_llama(d / "base", seed=0, dtype=torch.bfloat16)
    return {
        "dir": d,
        "base": base,
        "ft1": perturb(base, d / "ft1", seed=1),
        "ft2": perturb(base, d / "ft2", seed=2),
        "ft3": perturb(base, d / "ft3", seed=3),
    }


def leftovers(out: Path) -> list[str]:
    """Anything the engine left next to the output folder's would-be place."""
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") or p.name == out.name]


def test_ties_output_loads_and_runs_and_matches_the_operator(zoo, tmp_path):
    recipe = Recipe.from_arm("ties", {"weight": [0.5, 0.3], "density": 0.4}, [zoo["ft1"], zoo["ft2"]], zoo["base"])
    out = tmp_path / "merged"
    result = run_merge(recipe, out, device="cpu", progress=False)
    assert result.tensors == len(Checkpoint(zoo["base"]).tensors) and result.shards == 1

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    logits = model(torch.tensor([[1, 5, 9, 2]])).logits
    assert logits.shape == (1, 4, 64) and torch.isfinite(logits).all()

    # Every tensor is what the operator gives on the float32 inputs, in the base's dtype.
    base, a, b = (load_tensors(zoo[k]) for k in ("base", "ft1", "ft2"))
    merged = load_tensors(out)
    assert set(merged) == set(base)
    params = recipe.resolve().params
    for name in base:
        want = ops.ties_merge(base[name].float(), [a[name].float(), b[name].float()], OperatorParams(params, name))
        assert merged[name].dtype == torch.bfloat16
        assert torch.equal(merged[name], want.to(torch.bfloat16)), name


def test_linear_weights_one_zero_reproduce_model_one_bit_for_bit(zoo, tmp_path):
    recipe = Recipe.from_arm("linear", {"weight": [1, 0]}, [zoo["ft1"], zoo["ft2"]])
    run_merge(recipe, tmp_path / "m", progress=False)
    got, want = load_tensors(tmp_path / "m"), load_tensors(zoo["ft1"])
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name


def test_side_files_config_dtype_and_recipe_written(zoo, tmp_path):
    recipe = Recipe.from_arm("task_arithmetic", {"weight": 0.5}, [zoo["ft1"], zoo["ft2"]], zoo["base"],
                             out_dtype="float32")
    out = tmp_path / "m"
    run_merge(recipe, out, progress=False)
    names = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "tokenizer_config.json", RECIPE_JSON, RECIPE_YAML,
            "model.safetensors"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float32"
    assert all(t.dtype == torch.float32 for t in load_tensors(out).values())
    assert Recipe.load(out / RECIPE_YAML) == recipe
    assert Recipe.load(out / RECIPE_JSON) == recipe


def test_sharding_round_trips(zoo, tmp_path):
    recipe = Recipe.from_arm("ties", {"density": 0.5}, [zoo["ft1"], zoo["ft2"], zoo["ft3"]], zoo["base"])
    run_merge(recipe, tmp_path / "one", progress=False)
    result = run_merge(recipe, tmp_path / "many", shard_size="12KB", progress=False)
    assert result.shards > 2
    files = sorted(p.name for p in (tmp_path / "many").glob("*.safetensors"))
    assert files == [f"model-{i:05d}-of-{result.shards:05d}.safetensors" for i in range(1, result.shards + 1)]
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    one, many = load_tensors(tmp_path / "one"), load_tensors(tmp_path / "many")
    assert set(one) == set(many) and all(torch.equal(one[k], many[k]) for k in one)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in one.values())
    # And the sharded output is itself a valid input.
    again = Recipe.from_arm("linear", {"weight": [1, 0]}, [tmp_path / "many", zoo["ft1"]])
    run_merge(again, tmp_path / "again", progress=False)
    assert all(torch.equal(v, load_tensors(tmp_path / "again")[k]) for k, v in many.items())


def test_sharded_tied_inputs(tmp_path):
    base = make_llama(tmp_path / "base", seed=4, tie=True, shard_size="10KB")
    ft = perturb(base, tmp_path / "ft", seed=5)
    assert (base / "model.safetensors.index.json").exists()
    recipe = Recipe.from_arm("dare_linear", {"density": 0.5}, [ft], base, seed=11)
    run_merge(recipe, tmp_path / "m", progress=False)
    merged = load_tensors(tmp_path / "m")
    assert "lm_head.weight" not in merged  # tied in the base's config
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.isfinite(model(torch.tensor([[3, 4]])).logits).all()


def test_untied_output_takes_lm_head_from_a_tied_input(tmp_path):
    untied = make_llama(tmp_path / "untied", seed=6, tie=False)
    tied = make_llama(tmp_path / "tied", seed=7, tie=True)
    recipe = Recipe.from_arm("linear", {"weight": [0, 1]}, [untied, tied])
    run_merge(recipe, tmp_path / "m", progress=False)
    merged, t = load_tensors(tmp_path / "m"), load_tensors(tied)
    assert torch.equal(merged["lm_head.weight"], t["model.embed_tokens.weight"])


def test_random_operators_reproducible_across_runs(zoo, tmp_path):
    def merge(seed, out):
        r = Recipe.from_arm("della", {"density": 0.5, "epsilon": 0.1}, [zoo["ft1"], zoo["ft2"]], zoo["base"], seed=seed)
        run_merge(r, tmp_path / out, progress=False)
        return load_tensors(tmp_path / out)

    a, b, c = merge(1, "a"), merge(1, "b"), merge(2, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@merge_operator("test_fails_midway", [Param("after", 3, type="int")], base="unused")
def fails_midway(base, tensors, params):
    fails_midway.calls += 1
    if fails_midway.calls > params["after"]:
        raise RuntimeError("operator blew up")
    return tensors[0]


fails_midway.calls = 0


def test_exception_mid_merge_leaves_no_output_folder(zoo, tmp_path):
    from merging.registry import register

    fails_midway.calls = 0
    register(fails_midway, replace=True)
    recipe = Recipe.from_arm("test_fails_midway", {}, [zoo["ft1"]])
    out = tmp_path / "m"
    with pytest.raises(RuntimeError, match="blew up"):
        run_merge(recipe, out, shard_size="8KB", progress=False)
    assert fails_midway.calls == 4
    assert leftovers(out) == []


def test_interrupt_mid_merge_leaves_no_output_folder(zoo, tmp_path):
    seen = []

    def stop(name):
        seen.append(name)
        if len(seen) == 5:
            raise KeyboardInterrupt

    out = tmp_path / "m"
    recipe = Recipe.from_arm("ties", {"density": 0.5}, [zoo["ft1"], zoo["ft2"]], zoo["base"])
    with pytest.raises(KeyboardInterrupt):
        run_merge(recipe, out, progress=False, on_tensor=stop, shard_size="10KB")
    assert leftovers(out) == []


def test_operator_returning_a_wrong_shape_is_caught(zoo, tmp_path):
    @merge_operator("test_bad_shape", base="unused")
    def bad(base, tensors, params):
        return tensors[0].reshape(-1)[:1]

    from merging.registry import register

    register(bad, replace=True)
    with pytest.raises(MergeError, match="returned"):
        run_merge(Recipe.from_arm("test_bad_shape", {}, [zoo["ft1"]]), tmp_path / "m", progress=False)
    assert leftovers(tmp_path / "m") == []


# -- checks before any work -------------------------------------------------------------------------

def _truncate(src: Path, dst: Path) -> Path:
    perturb(src, dst, seed=9)
    f = dst / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    return dst


def _corrupt_header(src: Path, dst: Path) -> Path:
    perturb(src, dst, seed=9)
    f = dst / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 40) + b"{not json" + data[17:])
    return dst


def _drop_tensor(src: Path, dst: Path) -> Path:
    from safetensors.torch import save_file

    perturb(src, dst, seed=9)
    t = load_tensors(dst)
    del t["model.layers.1.mlp.up_proj.weight"]
    save_file(t, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("make_bad, message", [
    (lambda src, dst: dst, "no such folder"),
    (_truncate, "truncated"),
    (_corrupt_header, "corrupt safetensors header"),
    (_drop_tensor, "tensor 'model.layers.1.mlp.up_proj.weight' is in"),
    (lambda src, dst: make_llama(dst, seed=1, vocab=72, dtype=torch.bfloat16), "allow-vocab-mismatch"),
    (lambda src, dst: make_llama(dst, seed=1, hidden=48, dtype=torch.bfloat16), "has shape [64, 48] in"),
])
def test_bad_inputs_fail_before_any_work(zoo, tmp_path, make_bad, message):
    bad = make_bad(zoo["base"], tmp_path / "bad")
    out = tmp_path / "m"
    with pytest.raises(MergeError) as e:
        run_merge(Recipe(operator="ties", models=(zoo["ft1"], bad), base=zoo["base"]), out, progress=False)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert leftovers(out) == []


def test_allow_vocab_mismatch_merges_common_rows(zoo, tmp_path):
    big = make_llama(tmp_path / "big", seed=1, vocab=72, dtype=torch.bfloat16)
    recipe = Recipe.from_arm("linear", {"weight": [1, 0]}, [zoo["ft1"], big])
    run_merge(recipe, tmp_path / "m", allow_vocab_mismatch=True, progress=False)
    merged, ft1 = load_tensors(tmp_path / "m"), load_tensors(zoo["ft1"])
    assert merged["model.embed_tokens.weight"].shape == (64, 32)
    assert torch.equal(merged["lm_head.weight"], ft1["lm_head.weight"])
    recipe = Recipe.from_arm("linear", {"weight": [0, 1]}, [big, zoo["ft1"]])
    run_merge(recipe, tmp_path / "m2", allow_vocab_mismatch=True, progress=False)
    assert json.loads((tmp_path / "m2" / "config.json").read_text())["vocab_size"] == 64


def test_existing_output_folder_is_refused_and_kept(zoo, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MergeError, match="already exists"):
        run_merge(Recipe.from_arm("linear", {}, [zoo["ft1"]]), out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    run_merge(Recipe.from_arm("linear", {}, [zoo["ft1"]]), empty, progress=False)
    assert (empty / "model.safetensors").exists()


def test_bad_shard_size_and_device(zoo, tmp_path):
    recipe = Recipe.from_arm("linear", {}, [zoo["ft1"]])
    with pytest.raises(MergeError, match="shard size"):
        run_merge(recipe, tmp_path / "m", shard_size="lots", progress=False)
    with pytest.raises(MergeError, match="unknown device"):
        run_merge(recipe, tmp_path / "m", device="tpu", progress=False)
    assert leftovers(tmp_path / "m") == []


def test_cpu_merge_runs_on_one_intra_op_thread_and_puts_the_count_back(zoo, tmp_path):
    import merging.engine as engine

    seen = []
    recipe = Recipe.from_arm("ties", {"weight": [0.5, 0.5], "density": 0.5}, [zoo["ft1"], zoo["ft2"]], zoo["base"])
    torch.set_num_threads(2)
    try:
        run_merge(recipe, tmp_path / "pinned", device="cpu", progress=False,
                  on_tensor=lambda name: seen.append(torch.get_num_threads()))
        assert set(seen) == {engine.INTRA_OP_THREADS} and torch.get_num_threads() == 2
        # the same output with torch's own setting: pinning changes the speed only
        seen.clear()
        engine.INTRA_OP_THREADS = None
        run_merge(recipe, tmp_path / "free", device="cpu", progress=False,
                  on_tensor=lambda name: seen.append(torch.get_num_threads()))
        assert set(seen) == {2}
    finally:
        engine.INTRA_OP_THREADS = 1
        torch.set_num_threads(1)
    pinned, free = load_tensors(tmp_path / "pinned"), load_tensors(tmp_path / "free")
    assert all(torch.equal(pinned[n], free[n]) for n in free)
