"""Operators against hand-computed values; the registry and recipes without torch."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from merging import operators as ops
from merging import registry
from merging.errors import MergeError
from merging.recipe import Recipe
from merging.registry import OperatorParams, Param, get_operator, merge_operator, validate_params

torch.set_num_threads(1)


def run(name, base, tensors, seed=0, tensor_name="w", **params):
    """Call a registered operator the way the engine does: params resolved with defaults."""
    spec = get_operator(name)
    resolved = validate_params(name, params, len(tensors))
    return spec.function(base, tensors, OperatorParams(resolved, tensor_name, seed))


def T(*values):
    return torch.tensor(values, dtype=torch.float32)


# -- linear and task arithmetic ---------------------------------------------------------------

def test_linear_normalized_and_plain_sum():
    a, b = T(1, 2), T(3, 4)
    assert torch.allclose(run("linear", None, [a, b], weight=[1, 3]), T(2.5, 3.5))
    assert torch.allclose(run("linear", None, [a, b], weight=[1, 3], normalize=False), T(10, 14))
    # Weights 1, 0 give model 1 bit for bit.
    x = torch.randn(50)
    assert torch.equal(run("linear", None, [x, torch.randn(50)], weight=[1, 0]), x)


def test_task_arithmetic_lambda_and_normalize():
    base, m1, m2 = T(1, 1), T(2, 3), T(0, 5)  # deltas [1, 2] and [-1, 4]
    assert torch.allclose(run("task_arithmetic", base, [m1, m2], **{"lambda": 0.5}), T(1, 4))
    assert torch.allclose(run("task_arithmetic", base, [m1, m2], normalize=True), T(1, 4))
    assert torch.allclose(run("task_arithmetic", base, [m1, m2], weight=[2, 1]), T(2, 9))


# -- TIES -------------------------------------------------------------------------------------

TAU1 = T(1, -2, 0, 3, -1, 0.5)
TAU2 = T(-1, 2, 0, 1, -3, -0.5)


def test_ties_sign_election_with_ties_and_zeros():
    base = torch.zeros(6)
    # Sums [0, 0, 0, 4, -4, 0]: a zero sum elects +; the all-zero entry merges to 0.
    got = run("ties", base, [TAU1, TAU2])
    assert torch.allclose(got, T(1, 2, 0, 2, -2, 0.5))
    got = run("ties", base, [TAU1, TAU2], normalize=False)
    assert torch.allclose(got, T(1, 2, 0, 4, -4, 0.5))


def test_ties_weights_lambda_and_base():
    base = T(10, 10, 10, 10, 10, 10)
    got = run("ties", base, [base + TAU1, base + TAU2], weight=[2, 1], **{"lambda": 0.5})
    # weighted deltas [2, -4, 0, 6, -2, 1] and [-1, 2, 0, 1, -3, -0.5]; sums [1, -2, 0, 7, -5, 0.5]
    merged = T(2 / 2, -4 / 2, 0, 7 / 3, -5 / 3, 1 / 2)
    assert torch.allclose(got, base + 0.5 * merged)


def test_ties_weight_zero_has_no_vote():
    base = torch.zeros(3)
    got = run("ties", base, [T(1, 1, 1), T(-5, -5, 2)], weight=[1, 0])
    assert torch.allclose(got, T(1, 1, 1))


def test_top_k_mask_exact_count_with_equal_magnitudes():
    mag = T(3, 1, 3, 2, 3)
    assert ops.top_k_mask(mag, 2).tolist() == [True, False, True, False, False]
    assert ops.top_k_mask(mag, 4).tolist() == [True, False, True, True, True]
    assert ops.top_k_mask(mag, 0).sum() == 0 and ops.top_k_mask(mag, 5).all()
    big = torch.randn(64, 33).abs().round(decimals=1)  # many equal values
    for k in (1, 100, 1000, 2111):
        assert int(ops.top_k_mask(big, k).sum()) == k


@pytest.mark.parametrize("values", [
    torch.randn(300_000, generator=torch.Generator().manual_seed(0)).abs(),
    # bf16-like magnitudes: long runs of equal values around every threshold
    torch.randn(300_000, generator=torch.Generator().manual_seed(1)).abs().round(decimals=2),
    torch.zeros(300_000),
    torch.cat([torch.zeros(150_000), torch.ones(150_000)]),
])
def test_kth_largest_is_exact_on_large_tensors(values):
    assert values.numel() > ops._SELECT_DIRECT  # the sampled path
    n = values.numel()
    for k in (1, n // 100, n // 2, n - 5):
        assert ops.kth_largest(values, k) == values.kthvalue(n - k + 1).values, k
        # the mask a stable descending sort gives: ties at the threshold in index order
        want = torch.zeros(n, dtype=torch.bool)
        want[torch.sort(-values, stable=True).indices[:k]] = True
        assert torch.equal(ops.top_k_mask(values, k), want), k


def test_ties_trimming_keeps_int_density_numel():
    tau = T(5, -4, 3, -2, 1, 0.5, 0.25)
    got = run("ties", torch.zeros(7), [tau], density=0.5)  # int(3.5) = 3 kept
    assert torch.allclose(got, T(5, -4, 3, 0, 0, 0, 0))
    x = torch.randn(40, 25)
    for density in (0.1, 0.33, 0.9):
        kept = ops.trim_magnitude(x, density)
        assert int((kept != 0).sum()) == int(density * x.numel())
        assert kept.abs().max() == x.abs().max()


def test_ties_per_model_density():
    base = torch.zeros(4)
    got = run("ties", base, [T(4, 3, 2, 1), T(1, 2, 3, 4)], density=[0.25, 0.5], normalize=False)
    # model 1 keeps [4]; model 2 keeps [3, 4] at positions 2, 3
    assert torch.allclose(got, T(4, 0, 3, 4))


# -- breadcrumbs --------------------------------------------------------------------------------

def test_breadcrumbs_drops_top_gamma_keeps_next_density():
    tau = T(10, -9, 8, 7, -6, 5, 4, 3, 2, 1)
    base = torch.ones(10)
    got = run("breadcrumbs", base, [base + tau], density=0.5, gamma=0.1)
    assert torch.allclose(got, base + T(0, -9, 8, 7, -6, 5, 0, 0, 0, 0))
    # int(0.05 * 10) == 0: nothing dropped at the top.
    got = run("breadcrumbs", base, [base + tau], density=0.5, gamma=0.05)
    assert torch.allclose(got, base + T(10, -9, 8, 7, -6, 0, 0, 0, 0, 0))
    # gamma + density > 1: the density wins (8 kept), so only the 2 largest... minus what
    # the density needs: int(0.2*10)=2 at the top would leave 8, exactly density 0.8.
    got = run("breadcrumbs", base, [base + tau], density=0.8, gamma=0.2)
    assert torch.allclose(got, base + T(0, 0, 8, 7, -6, 5, 4, 3, 2, 1))
    # density 0.9 + gamma 0.2: 9 kept, so only the single largest is dropped (mergekit's rule).
    got = run("breadcrumbs", base, [base + tau], density=0.9, gamma=0.2)
    assert torch.allclose(got, base + T(0, -9, 8, 7, -6, 5, 4, 3, 2, 1))
    # density 1 keeps every entry whatever gamma says.
    got = run("breadcrumbs", base, [base + tau], density=1.0, gamma=0.2)
    assert torch.allclose(got, base + tau)
    # rescale: the kept entries scaled to the full delta's L1 norm (55 / 35).
    got = run("breadcrumbs", base, [base + tau], density=0.5, gamma=0.1, rescale=True)
    assert torch.allclose(got, base + T(0, -9, 8, 7, -6, 5, 0, 0, 0, 0) * (55 / 35))


def test_breadcrumbs_gamma_per_model():
    base = torch.zeros(4)
    got = run("breadcrumbs", base, [T(4, 3, 2, 1), T(4, 3, 2, 1)], density=0.5, gamma=[0.25, 0.0])
    # model 1 drops its top (4) and keeps 3, 2; model 2 drops nothing and keeps 4, 3
    assert torch.allclose(got, T(0, 3, 2, 0) + T(4, 3, 0, 0))


def test_breadcrumbs_ties_elects_signs_after_masking():
    base = torch.zeros(4)
    m1, m2 = T(100, 3, -2, 1), T(-100, -1, -4, 2)
    # gamma 0.25 drops each model's largest entry (the +-100), density 0.5 keeps the next two.
    got = run("breadcrumbs_ties", base, [m1, m2], density=0.5, gamma=0.25)
    # kept: m1 [0, 3, -2, 0], m2 [0, 0, -4, 2]; sums [0, 3, -6, 2]; normalize is off by
    # default (as in mergekit), so the agreeing entries add up.
    assert torch.allclose(got, T(0, 3, -6, 2))
    got = run("breadcrumbs_ties", base, [m1, m2], density=0.5, gamma=0.25, normalize=True)
    assert torch.allclose(got, T(0, 3, -3, 2))


# -- DARE and DELLA -----------------------------------------------------------------------------

def test_dare_keep_rate_and_rescale():
    n = 200_000
    base = torch.zeros(n)
    got = run("dare_linear", base, [torch.ones(n)], density=0.3, seed=7)
    kept = got != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.005
    # Default rescale (mergekit's): the kept delta carries the whole delta's L1 norm.
    assert torch.allclose(got[kept], torch.full((int(kept.sum()),), n / int(kept.sum())))
    assert abs(got.abs().sum().item() - n) < 1e-3 * n
    # The paper's rescale: each kept entry divided by the keep probability.
    paper = run("dare_linear", base, [torch.ones(n)], density=0.3, seed=7, rescale_inverse_p=True)
    assert torch.equal(paper != 0, kept)
    assert torch.allclose(paper[kept], torch.full((int(kept.sum()),), 1 / 0.3))
    assert abs(paper.mean().item() - 1.0) < 0.02  # unbiased
    plain = run("dare_linear", base, [torch.ones(n)], density=0.3, rescale=False, seed=7)
    assert torch.equal(plain != 0, kept) and plain[kept].eq(1).all()


def test_dare_seeded_by_seed_and_tensor_name():
    base, m = torch.zeros(1000), [torch.randn(1000), torch.randn(1000)]
    a = run("dare_ties", base, m, density=0.5, seed=1, tensor_name="layers.0.w")
    assert torch.equal(a, run("dare_ties", base, m, density=0.5, seed=1, tensor_name="layers.0.w"))
    assert not torch.equal(a, run("dare_ties", base, m, density=0.5, seed=2, tensor_name="layers.0.w"))
    assert not torch.equal(a, run("dare_ties", base, m, density=0.5, seed=1, tensor_name="layers.1.w"))
    # The seed must not depend on Python's per-process hash randomisation: another process
    # with another hash seed draws the same numbers.
    code = textwrap.dedent("""
        import torch
        from merging.operators import generator_for
        from merging.registry import OperatorParams
        g = generator_for(OperatorParams({}, "layers.0.w", 1), 0, "cpu")
        print(torch.rand(3, generator=g).tolist())
    """)
    here = torch.rand(3, generator=ops.generator_for(OperatorParams({}, "layers.0.w", 1), 0, "cpu")).tolist()
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}, cwd=".")
    assert other.stdout.strip() == str(here), other.stderr


def test_dare_ties_uses_sign_election():
    base = torch.zeros(4)
    got = run("dare_ties", base, [T(1, 1, -1, 0), T(-3, 1, 1, 0)], density=1.0)
    # density 1 keeps everything; sums [-2, 2, 0, 0]: the tie at entry 2 elects +;
    # normalize is off by default (as in mergekit): agreeing entries add up.
    assert torch.allclose(got, T(-3, 2, 1, 0))
    got = run("dare_ties", base, [T(1, 1, -1, 0), T(-3, 1, 1, 0)], density=1.0, normalize=True)
    assert torch.allclose(got, T(-3, 1, 1, 0))


def test_della_keep_probability_ranges_with_rank():
    rows, n = 40_000, 5
    # Magnitude j+1 at a shuffled position in each row: probability must follow the rank.
    perm = torch.argsort(torch.rand(rows, n, generator=torch.Generator().manual_seed(0)), dim=1)
    tau = (perm + 1).float()
    got = run("della", torch.zeros(rows, n), [tau], density=0.5, epsilon=0.2, seed=3, rescale_inverse_p=True)
    p_expected = [0.3, 0.4, 0.5, 0.6, 0.7]
    for j in range(n):
        at = tau == j + 1
        kept = got[at] != 0
        assert abs(kept.float().mean().item() - p_expected[j]) < 0.01
        assert torch.allclose(got[at][kept], torch.full((int(kept.sum()),), (j + 1) / p_expected[j]))
        assert abs(got[at].mean().item() - (j + 1)) < 0.05 * (j + 1)
    # Default rescale (mergekit's): same draws, the kept entries times one factor for the
    # whole tensor that restores its L1 norm (15 per row for magnitudes 1..5).
    l1 = run("della", torch.zeros(rows, n), [tau], density=0.5, epsilon=0.2, seed=3)
    kept = l1 != 0
    assert torch.equal(kept, got != 0)
    factor = 15.0 * rows / float((tau * kept).sum())
    assert torch.allclose(l1, tau * kept * factor)


def test_della_refuses_probabilities_outside_the_unit_interval():
    with pytest.raises(MergeError) as e:
        validate_params("della", {"density": 0.9, "epsilon": 0.15}, 1)
    assert "density +- epsilon" in str(e.value)


def test_della_reproducible_and_one_dimensional():
    base, m = torch.zeros(300), [torch.randn(300), torch.randn(300)]
    a = run("della", base, m, density=0.6, seed=5)
    assert torch.equal(a, run("della", base, m, density=0.6, seed=5))
    assert (a != 0).any()


# -- slerp ----------------------------------------------------------------------------------------

def test_slerp_spherical_formula_on_original_vectors():
    h = math.sin(math.pi / 4)
    assert torch.allclose(run("slerp", None, [T(1, 0), T(0, 1)], t=0.5), T(h, h))
    assert torch.allclose(run("slerp", None, [T(2, 0), T(0, 1)], t=0.5), T(2 * h, h))
    third = run("slerp", None, [T(1, 0), T(0, 1)], t=1 / 3)
    assert torch.allclose(third, T(math.cos(math.pi / 6), math.sin(math.pi / 6)))


def test_slerp_endpoints_and_base_as_first_endpoint():
    a, b = torch.randn(20), torch.randn(20)
    assert torch.equal(run("slerp", None, [a, b], t=0.0), a)
    assert torch.allclose(run("slerp", None, [a, b], t=1.0), b, atol=1e-6)
    assert torch.equal(run("slerp", a, [b], t=0.3), run("slerp", None, [a, b], t=0.3))


def test_slerp_near_colinear_falls_back_to_lerp():
    a, b = T(1, 0), T(1, 0.01)  # cos = 0.99995 > 0.9995
    assert torch.allclose(run("slerp", None, [a, b], t=0.5), T(1, 0.005))
    # Opposite vectors: |cos| = 1, also linear.
    assert torch.allclose(run("slerp", None, [T(1, 0), T(-1, 0)], t=0.5), T(0, 0))
    # Just below the threshold the spherical formula applies and differs from lerp.
    angle = math.acos(0.999)
    c = T(math.cos(angle), math.sin(angle))
    half = run("slerp", None, [T(1, 0), c], t=0.5)
    assert torch.allclose(half, T(math.cos(angle / 2), math.sin(angle / 2)), atol=1e-6)


# -- model stock ------------------------------------------------------------------------------------

def test_model_stock_two_models():
    base = T(1, 1)
    got = run("model_stock", base, [base + T(1, 0), base + T(1, 1)])
    c = 1 / math.sqrt(2)
    t = 2 * c / (1 + c)
    assert torch.allclose(got, T(1 + t, 1 + 0.5 * t))


def test_model_stock_three_models():
    base = torch.zeros(3)
    got = run("model_stock", base, [T(1, 0, 0), T(0, 1, 0), T(1, 1, 0)])
    c = (0 + 2 / math.sqrt(2)) / 3
    t = 3 * c / (1 + 2 * c)
    assert torch.allclose(got, t * T(2 / 3, 2 / 3, 0))


def test_model_stock_identical_deltas_give_the_mean():
    base, delta = torch.randn(10), torch.randn(10)
    got = run("model_stock", base, [base + delta, base + delta])
    assert torch.allclose(got, base + delta, atol=1e-6)


# -- registry and recipes (no torch needed) ---------------------------------------------------------

def test_registry_lists_every_builtin_with_params():
    names = {s.name for s in registry.list_operators()}
    assert {"linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
            "breadcrumbs_ties", "della", "slerp", "model_stock"} <= names
    ties = get_operator("ties")
    assert ties.param("density").per_model and not ties.param("lambda").per_model
    assert ties.param("normalize").default is True
    assert get_operator("task_arithmetic").param("normalize").default is False


@pytest.mark.parametrize("operator, params, n, message", [
    ("nope", {}, 2, "unknown operator 'nope'"),
    ("ties", {"densty": 0.5}, 2, "unknown parameter 'densty'"),
    ("ties", {"density": "lots"}, 2, "density must be a number"),
    ("ties", {"density": 1.5}, 2, "density must be <= 1.0"),
    ("ties", {"weight": [1, 2, 3]}, 2, "weight lists 3 value(s) for 2 model(s)"),
    ("ties", {"lambda": [1, 2]}, 2, "lambda takes one value"),
    ("ties", {"normalize": "maybe"}, 2, "normalize must be true or false"),
    ("linear", {"weight": [1, -1]}, 2, "weights sum to 0"),
    ("dare_ties", {"density": 0}, 2, "density must be > 0"),
    ("slerp", {"t": float("nan")}, 2, "t must be finite"),
])
def test_validate_params_errors_are_one_line(operator, params, n, message):
    with pytest.raises(MergeError) as e:
        validate_params(operator, params, n)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_validate_params_fills_defaults_and_spreads_scalars():
    got = validate_params("ties", {"weight": [0.7, 0.3], "density": 0.5}, 2)
    assert got == {"lambda": 1.0, "normalize": True, "weight": [0.7, 0.3], "density": [0.5, 0.5],
                   "rescale": False, "rescale_inverse_p": False, "int8_mask": False}


def test_registry_and_recipe_import_without_torch():
    code = textwrap.dedent("""
        import sys
        from merging.registry import list_operators, validate_params
        from merging.recipe import Recipe
        r = Recipe.from_arm("ties", {"weight": [0.5, 0.5], "density": 0.5}, ["a", "b"], "base")
        Recipe.from_yaml(r.to_yaml()).validate()
        list_operators()
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=".")
    assert out.stdout.strip() == "ok", out.stderr


def test_recipe_from_arm_spreads_lists_onto_models():
    r = Recipe.from_arm("ties", {"weight": [0.7, 0.3], "density": 0.5, "normalize": False},
                        ["m1", "m2"], base="b", seed=3)
    assert [m.params for m in r.models] == [{"weight": 0.7}, {"weight": 0.3}]
    assert r.params == {"density": 0.5, "normalize": False}
    resolved = r.resolve()
    assert resolved.models == ["m1", "m2"] and resolved.base == "b"
    assert resolved.params["weight"] == [0.7, 0.3] and resolved.params["density"] == [0.5, 0.5]
    assert Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_yaml(r.to_yaml()) == r


def test_recipe_reads_the_merge_yaml_layout():
    text = textwrap.dedent("""
        merge_method: ties
        base_model: base
        models:
          - model: base
          - model: m1
            parameters: {weight: 0.6, density: 0.5}
          - model: m2
            parameters: {weight: 0.4, density: 0.7}
        parameters:
          normalize: true
          lambda: 0.9
        dtype: bfloat16
        out_dtype: float16
    """)
    r = Recipe.from_yaml(text)
    assert r.operator == "ties" and r.base == "base" and r.dtype == "bfloat16" and r.out_dtype == "float16"
    resolved = r.resolve()
    # The base listed among the models adds a zero delta: it is left out of the math.
    assert resolved.models == ["m1", "m2"]
    assert resolved.params["weight"] == [0.6, 0.4] and resolved.params["density"] == [0.5, 0.7]
    assert resolved.params["lambda"] == 0.9


def test_recipe_slerp_with_base_among_models():
    r = Recipe.from_yaml("merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\nparameters: {t: 0.3}\n")
    assert r.resolve().models == ["b"]
    # an arm applied to a pair: the two models fill slerp, the base is not an endpoint
    pair = Recipe.from_arm("slerp", {}, ["b", "c"], base="a")
    assert pair.base is None and pair.resolve().models == ["b", "c"]
    assert Recipe.from_arm("slerp", {}, ["b"], base="a").resolve().models == ["b"]
    with pytest.raises(MergeError, match="exactly 2 model"):
        Recipe.from_arm("slerp", {}, ["b", "c", "d"])


@pytest.mark.parametrize("text, message", [
    ("merge_method: ties\nslices: []\n", "no models given"),
    ("merge_method: ties\nbase_model: b\nmodels: 5\n", "models must be a list"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, weigth: 1}]\n", "models[0]: unknown key 'weigth'"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weigth: 1}}]\n", "unknown parameter 'weigth'"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {lambda: 1}}]\n", "lambda is a global parameter"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {weight: [{filter: mlp, valeu: 1}]}}]\n",
     "unknown key 'valeu'"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a, parameters: {density: [0.5, 1.5]}}]\n", "density must be <= 1.0"),
    ("merge_method: ties\nbase_model: b\nmodules: {}\nmodels: [{model: a}]\n", "exactly one of models, slices or modules"),
    ("merge_method: ties\nbase_model: b\nmodules: {}\n", "'modules' must hold one module"),
    ("merge_method: ties\nbase_model: b\nmodules: {vision_tower: {models: [{model: a}]}}\n", "multi-module models"),
    ("merge_method: ties\nbase_model: b\nmodules: {default: {models: [{model: a}], weight: 1}}\n",
     "modules.default: unknown key 'weight'"),
    ("merge_method: ties\nbase_model: b\nmodules: {default: {models: [{model: a}], parameters: {lambda: [{valeu: 1}]}}}\n",
     "unknown key 'valeu'"),
    ("merge_method: ties\nbase_model: b\nslices: [{sources: [{model: a, layer_range: [0, 1]}], residual_weight: x}]\n",
     "residual_weight must be a number"),
    ("merge_method: ties\nbase_model: b\nslices: [{sources: [{model: a, layer_range: [0, 2]}, "
     "{model: c, layer_range: [0, 3]}]}]\n", "same number of layers"),
    ("merge_method: ties\nbase_model: b\nslices: [{sources: [{model: a, layer_range: [0, 'x']}]}]\n", "layer_range"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]\n",
     "models or slices"),
    ("merge_method: ties\nbase_model: b\nmodels: [{model: a}]\nfoo: 1\n", "unknown key 'foo'"),
    ("merge_method: ties\nmodels: [{model: a}]\ndtype: int4\n", "unknown dtype"),
    ("merge_method: ties\nmodels: [{model: a}]\n", "needs a base model"),
    ("merge_method: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_bad_recipes_are_one_line_errors(text, message):
    with pytest.raises(MergeError) as e:
        Recipe.from_yaml(text).validate()
    assert message in str(e.value) and "\n" not in str(e.value)


# -- operators from outside ---------------------------------------------------------------------------

@merge_operator("test_scaled_mean", [Param("scale", 2.0), Param("weight", 1.0, per_model=True)], base="unused")
def scaled_mean(base, tensors, params):
    """A plugin: scale * weighted mean."""
    total = sum(w * t for w, t in zip(params["weight"], tensors))
    return params["scale"] * total / sum(params["weight"])


@pytest.fixture
def clean_registry():
    saved = dict(registry._registry), registry._entry_points_loaded
    yield
    registry._registry.clear()
    registry._registry.update(saved[0])
    registry._entry_points_loaded = saved[1]


def test_plugin_by_module_function(clean_registry):
    spec = registry.load_plugin("tests.test_operators:scaled_mean")
    assert spec.name == "test_scaled_mean" and get_operator("test_scaled_mean") is spec
    got = run("test_scaled_mean", None, [T(1, 1), T(3, 3)], scale=0.5)
    assert torch.allclose(got, T(1, 1))
    for bad, message in (("tests.test_operators", "expected module:function"),
                         ("no_such_module_xyz:f", "cannot import"),
                         ("tests.test_operators:nothing_here", "has no"),
                         ("tests.test_operators:run", "not a merge operator")):
        with pytest.raises(MergeError, match=message):
            registry.load_plugin(bad)


def test_plugin_by_entry_point(clean_registry, monkeypatch):
    from importlib import metadata

    ep = metadata.EntryPoint("their_op", "tests.test_operators:scaled_mean", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    registry._entry_points_loaded = False
    assert get_operator("their_op").name == "test_scaled_mean"
    assert "test_scaled_mean" in {s.name for s in registry.list_operators()}
    r = Recipe.from_arm("their_op", {"scale": 3.0}, ["a", "b"])
    assert r.resolve().params == {"scale": 3.0, "weight": [1.0, 1.0]}


def test_ties_sign_election_rounds_each_product():
    # 0.3 * 0.001953125 and 0.2 * 0.0029296875 cancel once each product is rounded to
    # float32; a fused multiply-add would leave a tiny negative sum and elect the wrong sign.
    deltas = [T(-0.0), T(-0.001953125), T(0.0029296875)]
    got = ops.ties_combine(deltas, [0.5, 0.3, 0.2], normalize=True)
    assert got.item() == pytest.approx(0.0029296875)


def test_linear_on_stored_dtypes_is_bit_identical_to_the_float32_formula():
    # Inputs in bfloat16 and longer than a chunk: the chunked conversion must round exactly
    # as converting whole tensors to float32 first and the output last.
    n = ops.LINEAR_CHUNK * 2 + 123
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, generator=g).to(torch.bfloat16) for _ in range(3)]
    weights = [0.5, 0.3, 0.7]
    want = tensors[0].float() * weights[0]
    for t, w in zip(tensors[1:], weights[1:]):
        want.add_(t.float(), alpha=w)
    want /= sum(weights)
    params = validate_params("linear", {"weight": weights}, 3)
    got = get_operator("linear").function(None, tensors, OperatorParams(params, "w", 0, torch.float32, torch.bfloat16))
    assert got.dtype == torch.bfloat16 and torch.equal(got, want.to(torch.bfloat16))
    got32 = get_operator("linear").function(None, [t.float() for t in tensors], OperatorParams(params, "w"))
    assert got32.dtype == torch.float32 and torch.equal(got32, want)


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [1.0, 0.25, 0.5], [1.0, 1.0, 1.0]])
def test_linear_skipped_unit_passes_change_no_bit(weights):
    # Weights summing to exactly 1 (no division) or a first weight of 1 (no product) must
    # give the same bits as the full formula, in float32 and in bfloat16 out.
    g = torch.Generator().manual_seed(1)
    tensors = [torch.randn(5000, generator=g) for _ in range(3)]
    want = tensors[0] * weights[0]
    for t, w in zip(tensors[1:], weights[1:]):
        want.add_(t, alpha=w)
    want /= sum(weights)
    params = validate_params("linear", {"weight": weights}, 3)
    got = get_operator("linear").function(None, tensors, OperatorParams(params, "w"))
    assert torch.equal(got, want)
