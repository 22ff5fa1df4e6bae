"""mergekit's configuration features through the engine, on tiny checkpoints: each output
tensor equals the operator applied by hand with the parameters the recipe gives it."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
import yaml

from merging import operators as ops
from merging.engine import run_merge
from merging.errors import MergeError
from merging.output import MERGEKIT_CONFIG, MODEL_CARD
from merging.recipe import Recipe
from merging.registry import OperatorParams, validate_params
from merging.settings import evaluate
from tests.tiny_models import load_tensors, make_llama, perturb

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("mk")
    base = make_llama(d / "base", seed=0, layers=3)
    return {"dir": d, "base": base, "a": perturb(base, d / "a", seed=1), "b": perturb(base, d / "b", seed=2)}


def merge_yaml(text: str, out, **kw):
    return run_merge(Recipe.from_yaml(textwrap.dedent(text)), out, device="cpu", progress=False, **kw)


def test_settings_gradients_and_filters():
    assert evaluate([0.0, 1.0], "x", 0.25) == 0.25
    assert evaluate([0.0, 0.5, 0.3, 0.7, 1.0], "x", 0.5) == 0.3
    assert evaluate([0.0, 0.5, 0.3, 0.7, 1.0], "x", 0.375) == pytest.approx(0.5 * 0.5 + 0.5 * 0.3)
    assert evaluate([0.0, 0.5, 0.3, 0.7, 1.0], "x", 1.0) == 1.0
    f = [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.9}, {"value": 0.5}]
    assert evaluate(f, "model.layers.0.self_attn.q_proj.weight", 1.0) == 1
    assert evaluate(f, "model.layers.0.mlp.up_proj.weight", 0.0) == 0.9
    assert evaluate(f, "model.norm.weight", 0.0) == 0.5
    assert evaluate([{"filter": "mlp", "value": 1}], "model.norm.weight", 0.0) is None
    assert evaluate([True, False], "x", 0.4) is True


def test_gradient_and_filters_per_layer_slerp(zoo, tmp_path):
    out = tmp_path / "m"
    merge_yaml(f"""
        merge_method: slerp
        base_model: {zoo['a']}
        models: [{{model: {zoo['a']}}}, {{model: {zoo['b']}}}]
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 1]
            - filter: mlp
              value: [1, 0.5, 0]
            - value: 0.3
        """, out)
    a, b, got = load_tensors(zoo["a"]), load_tensors(zoo["b"]), load_tensors(out)
    for name, tensor in got.items():
        if ".layers." in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            position = layer / 2  # three layers: t = 0, 0.5, 1
            if "self_attn" in name:
                t = [0, 0.5, 1][layer]
            elif "mlp" in name:
                t = [1, 0.5, 0][layer]
            else:
                t = 0.3
            assert position in (0, 0.5, 1)
        else:
            t = 0.3
        want = ops.slerp_merge(a[name].float(), [b[name].float()], OperatorParams({"t": t}, name))
        assert torch.equal(tensor, want.to(tensor.dtype)), name


def test_per_model_gradient_weights_task_arithmetic(zoo, tmp_path):
    out = tmp_path / "m"
    merge_yaml(f"""
        merge_method: task_arithmetic
        base_model: {zoo['base']}
        models:
          - model: {zoo['a']}
            parameters: {{weight: [1.0, 0.0]}}
          - model: {zoo['b']}
            parameters:
              weight: [{{filter: mlp, value: 2.0}}, {{value: 0.5}}]
        parameters: {{lambda: 0.8}}
        """, out)
    base, a, b = (load_tensors(zoo[k]) for k in ("base", "a", "b"))
    got = load_tensors(out)
    for name, tensor in got.items():
        layer = int(name.split(".layers.")[1].split(".")[0]) if ".layers." in name else None
        wa = 1.0 - (layer / 2 if layer is not None else 0.0)
        wb = 2.0 if "mlp" in name else 0.5
        want = base[name] + 0.8 * (wa * (a[name] - base[name]) + wb * (b[name] - base[name]))
        assert torch.allclose(tensor, want, atol=1e-6), name


def test_dtype_is_the_output_dtype_unless_out_dtype(zoo, tmp_path):
    merge_yaml(f"merge_method: linear\nmodels: [{{model: {zoo['a']}}}, {{model: {zoo['b']}}}]\ndtype: bfloat16\n",
               tmp_path / "bf")
    assert {t.dtype for t in load_tensors(tmp_path / "bf").values()} == {torch.bfloat16}
    # As in mergekit, inputs are cast to `dtype` before the (float32) math.
    a, b, got = load_tensors(zoo["a"]), load_tensors(zoo["b"]), load_tensors(tmp_path / "bf")
    for name in got:
        want = ((a[name].bfloat16().float() + b[name].bfloat16().float()) / 2).bfloat16()
        assert torch.equal(got[name], want), name
    assert json.loads((tmp_path / "bf" / "config.json").read_text())["dtype"] == "bfloat16"
    merge_yaml(f"merge_method: linear\nmodels: [{{model: {zoo['a']}}}]\ndtype: bfloat16\nout_dtype: float16\n",
               tmp_path / "f16")
    assert {t.dtype for t in load_tensors(tmp_path / "f16").values()} == {torch.float16}
    merge_yaml(f"merge_method: linear\nmodels: [{{model: {zoo['a']}}}]\n", tmp_path / "same")
    assert {t.dtype for t in load_tensors(tmp_path / "same").values()} == {torch.float32}


def test_slices_change_the_layer_count(zoo, tmp_path):
    out = tmp_path / "frank"
    merge_yaml(f"""
        merge_method: passthrough
        slices:
          - sources: [{{model: {zoo['a']}, layer_range: [0, 2]}}]
          - sources: [{{model: {zoo['b']}, layer_range: [1, 3]}}]
        """, out)
    a, b, got = load_tensors(zoo["a"]), load_tensors(zoo["b"]), load_tensors(out)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4
    source = {0: (a, 0), 1: (a, 1), 2: (b, 1), 3: (b, 2)}
    for name, tensor in got.items():
        if ".layers." in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            model, src_layer = source[layer]
            assert torch.equal(tensor, model[name.replace(f".layers.{layer}.", f".layers.{src_layer}.")]), name
        elif "embed" in name:
            assert torch.equal(tensor, a[name])
        else:  # final norm and lm_head from the last slice's model
            assert torch.equal(tensor, b[name])
    assert len([n for n in got if ".layers." in n]) == 4 * len([n for n in a if ".layers.0." in n])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 4
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_slices_with_a_merge_method_and_t_per_slice(zoo, tmp_path):
    out = tmp_path / "sl"
    merge_yaml(f"""
        merge_method: linear
        slices:
          - sources:
              - {{model: {zoo['a']}, layer_range: [0, 3], parameters: {{weight: [1, 0]}}}}
              - {{model: {zoo['b']}, layer_range: [0, 3], parameters: {{weight: [0, 1]}}}}
        """, out)
    a, b, got = load_tensors(zoo["a"]), load_tensors(zoo["b"]), load_tensors(out)
    for layer, (wa, wb) in enumerate([(1, 0), (0.5, 0.5), (0, 1)]):
        name = f"model.layers.{layer}.mlp.up_proj.weight"
        assert torch.allclose(got[name], wa * a[name] + wb * b[name]), name


def test_output_has_mergekit_config_and_model_card_with_provenance(zoo, tmp_path):
    recipe = Recipe.from_arm("ties", {"weight": [0.6, 0.4], "density": 0.5}, [zoo["a"], zoo["b"]], zoo["base"])
    out = tmp_path / "m"
    run_merge(recipe, out, device="cpu", progress=False,
              provenance={"event_id": 42, "policy": "linucb", "predicted_reward": 0.61})
    config = yaml.safe_load((out / MERGEKIT_CONFIG).read_text())
    assert config["merge_method"] == "ties" and config["base_model"] == str(zoo["base"])
    assert [m["parameters"]["weight"] for m in config["models"]] == [0.6, 0.4]
    assert Recipe.from_dict(config) == recipe
    card = (out / MODEL_CARD).read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == str(zoo["base"]) and "merge" in front["tags"]
    for text in ("event id: 42", "policy: linucb", "predicted reward: 0.61", str(zoo["a"]), str(zoo["b"]),
                 "- density: [0.5, 0.5]", "`ties`"):
        assert text in card, text


def test_chat_template_auto_and_literal(zoo, tmp_path):
    templated = perturb(zoo["base"], tmp_path / "t", seed=4)
    cfg = json.loads((templated / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{{ messages[0].content }}"
    (templated / "tokenizer_config.json").write_text(json.dumps(cfg))
    merge_yaml(f"merge_method: linear\nmodels: [{{model: {zoo['a']}}}, {{model: {templated}}}]\nchat_template: auto\n",
               tmp_path / "auto")
    assert json.loads((tmp_path / "auto" / "tokenizer_config.json").read_text())["chat_template"] == "{{ messages[0].content }}"
    merge_yaml(f"merge_method: linear\nmodels: [{{model: {zoo['a']}}}]\nchat_template: '{{% for m in messages %}}x{{% endfor %}}'\n",
               tmp_path / "lit")
    assert json.loads((tmp_path / "lit" / "tokenizer_config.json").read_text())["chat_template"] == \
        "{% for m in messages %}x{% endfor %}"
    with pytest.raises(MergeError, match="one of alpaca, chatml, exaone, llama3, mistral"):
        merge_yaml(f"merge_method: linear\nmodels: [{{model: {zoo['a']}}}]\nchat_template: zephyr\n", tmp_path / "named")
    assert not (tmp_path / "named").exists()


def test_tokenizer_source_takes_files_from_that_model(zoo, tmp_path):
    other = perturb(zoo["base"], tmp_path / "tok", seed=5)
    (other / "special_tokens_map.json").write_text('{"bos_token": "<s>"}')
    merge_yaml(f"merge_method: linear\nmodels: [{{model: {zoo['a']}}}]\ntokenizer_source: {other}\n", tmp_path / "m")
    assert (tmp_path / "m" / "special_tokens_map.json").read_text() == '{"bos_token": "<s>"}'
    with pytest.raises(MergeError, match="no base_model"):
        merge_yaml(f"merge_method: linear\nmodels: [{{model: {zoo['a']}}}]\ntokenizer_source: base\n", tmp_path / "n")


def test_arms_take_every_operator_with_its_parameters():
    assert validate_params("sce", {"select_topk": 0.5}, 2)["select_topk"] == 0.5
    assert validate_params("della_linear", {"density": 0.5, "epsilon": [0.1, 0.2]}, 2)["epsilon"] == [0.1, 0.2]


def test_multi_document_recipe_with_named_intermediates(zoo, tmp_path):
    from merging.multi import run_recipe_file

    recipe = tmp_path / "multi.yaml"
    recipe.write_text(textwrap.dedent(f"""
        merge_method: linear
        models: [{{model: step1, parameters: {{weight: 0.5}}}}, {{model: {zoo['b']}, parameters: {{weight: 0.5}}}}]
        ---
        name: step1
        merge_method: task_arithmetic
        base_model: {zoo['base']}
        models: [{{model: {zoo['a']}, parameters: {{weight: 2.0}}}}]
        """))
    out = tmp_path / "final"
    run_recipe_file(recipe, out, device="cpu", progress=False)
    base, a, b, got = (load_tensors(p) for p in (zoo["base"], zoo["a"], zoo["b"], out))
    for name in got:
        step1 = base[name] + 2.0 * (a[name] - base[name])
        assert torch.allclose(got[name], 0.5 * step1 + 0.5 * b[name], atol=1e-6), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "multi.yaml"]  # intermediates removed


@pytest.mark.parametrize("text, message", [
    ("name: x\nmerge_method: linear\nmodels: [{model: y}]\n---\nname: y\nmerge_method: linear\nmodels: [{model: x}]\n",
     "circular reference"),
    ("name: x\nmerge_method: linear\nmodels: [{model: a}]\n---\nname: x\nmerge_method: linear\nmodels: [{model: b}]\n",
     "used by two documents"),
    ("merge_method: linear\nmodels: [{model: a}]\n---\nmerge_method: linear\nmodels: [{model: b}]\n",
     "more than one document without a name"),
    ("merge_method: linear\nmodels: [{model: a}]\n---\nname: x\nmerge_method: linear\nmodels: [{model: a, wieght: 1}]\n",
     "document 2: recipe: models[0]: unknown key 'wieght'"),
])
def test_multi_document_errors_before_any_work(tmp_path, text, message):
    from merging.multi import run_recipe_file

    recipe = tmp_path / "multi.yaml"
    recipe.write_text(text)
    with pytest.raises(MergeError) as e:
        run_recipe_file(recipe, tmp_path / "out", device="cpu", progress=False)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multi.yaml"]


def test_recipes_with_slices_gradients_and_filters_round_trip_both_layouts():
    text = textwrap.dedent("""
        slices:
          - sources:
              - {model: a, layer_range: [0, 4], parameters: {weight: [1, 0]}}
              - {model: b, layer_range: [2, 6]}
            parameters:
              weight: [{filter: mlp, value: 0.5}, {value: [0.2, 0.8]}]
        merge_method: linear
        parameters: {normalize: false}
        dtype: bfloat16
        tokenizer_source: base
        chat_template: auto
        name: sliced
        """)
    r = Recipe.from_yaml(text)
    assert Recipe.from_yaml(r.to_yaml()) == r
    assert Recipe.from_dict(json.loads(r.to_json())) == r
    resolved = r.resolve()
    group = resolved.groups[0]
    assert group.ranges == [(0, 4), (2, 6)]
    # a's own gradient wins; b falls back to the slice's filter list.
    got = resolved.params_for(group, ["model.layers.0.mlp.x", "model.layers.2.mlp.x"], 0.5, "model.layers.1.mlp.x")
    assert got["weight"] == [0.5, 0.5] and got["normalize"] is False
    got = resolved.params_for(group, ["model.layers.0.attn.x", "model.layers.2.attn.x"], 0.25, "model.layers.1.attn.x")
    assert got["weight"] == [0.75, pytest.approx(0.35)]


def test_modules_default_ranks_its_parameters_between_the_models_and_the_recipe(zoo, tmp_path):
    text = textwrap.dedent(f"""
        merge_method: linear
        modules:
          default:
            models:
              - {{model: {zoo['a']}, parameters: {{weight: 0.7}}}}
              - {{model: {zoo['b']}}}
            parameters:
              weight: [{{filter: mlp, value: 0.2}}]
        parameters: {{weight: 0.9, normalize: false}}
        dtype: float32
        """)
    recipe = Recipe.from_yaml(text)
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe and Recipe.from_dict(json.loads(recipe.to_json())) == recipe
    assert "modules" in yaml.safe_load(recipe.to_yaml())
    run_merge(recipe, tmp_path / "m", device="cpu", progress=False)
    a, b, got = (load_tensors(p) for p in (zoo["a"], zoo["b"], tmp_path / "m"))
    for name in got:
        # b: the module's filter where it matches (mlp), else the recipe's 0.9; no normalising
        wb = 0.2 if "mlp" in name else 0.9
        assert torch.allclose(got[name], 0.7 * a[name] + wb * b[name], atol=1e-6), name
