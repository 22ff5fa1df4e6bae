"""The operators added for mergekit parity, each against its formula computed here in
float64 numpy (or by hand), independently of the operator's own code."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from merging.errors import MergeError
from merging.registry import OperatorParams, get_operator, validate_params

torch.set_num_threads(1)


def run(name, base, tensors, **params):
    spec = get_operator(name)
    resolved = validate_params(name, params, len(tensors))
    return spec.function(base, tensors, OperatorParams(resolved, "w", 0))


def T(*values):
    return torch.tensor(values, dtype=torch.float64)


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_della_linear_without_dropping_is_task_arithmetic():
    base, a, b = rand(6, seed=0), rand(6, seed=1), rand(6, seed=2)
    got = run("della_linear", base, [a, b], weight=[0.7, 0.2], density=1.0, epsilon=0.0)
    assert torch.allclose(got, base + 0.7 * (a - base) + 0.2 * (b - base))


def test_passthrough_copies_and_scales():
    a = rand(3, 4, seed=1)
    assert torch.equal(run("passthrough", None, [a]), a)
    assert torch.allclose(run("passthrough", None, [a], scale=0.5), a * 0.5)


def test_nearswap_formula():
    base, other = T(0.0, 0.0, 0.0, 1.0), T(0.001, 0.5, -2.0, 1.0)
    got = run("nearswap", base, [other], t=0.01)
    # w = clamp(t / max(|a-b|, 1e-6), 0, 1): 1 where |a-b| <= t, t/|a-b| elsewhere.
    w = [1.0, 0.01 / 0.5, 0.01 / 2.0, 1.0]
    want = [wi * o + (1 - wi) * b for wi, o, b in zip(w, other.tolist(), base.tolist())]
    assert torch.allclose(got, T(*want))
    with pytest.raises(MergeError, match="t is required"):
        validate_params("nearswap", {}, 1)


def test_sce_formula_by_hand():
    base = torch.zeros(4, dtype=torch.float64)
    a, b = T(2.0, -1.0, 0.0, 1.0), T(-1.0, -1.0, 3.0, 1.0)
    got = run("sce", base, [a, b])
    # weights: mean squares 6/4 and 12/4 -> 1/3 and 2/3. Elected signs of a+b: [+, -, +, +].
    # entry 0: only a agrees -> 2; entry 1: both -> -1; entry 2: a is 0 (not counted) -> 3;
    # entry 3: both -> 1.
    assert torch.allclose(got, T(2.0, -1.0, 3.0, 1.0))
    # select_topk 0.5: of the 2 entries whose deltas differ (variance 2.25 at entries 0 and
    # 2), int(2 * 0.5) = 1 is kept; the tie goes to the first in index order. Then only a
    # agrees with the elected sign (+) there.
    got = run("sce", base, [a, b], select_topk=0.5)
    assert torch.allclose(got, T(2.0, 0.0, 0.0, 0.0))


def test_arcee_fusion_keeps_upper_outliers_of_importance():
    base = torch.zeros(5, 8, dtype=torch.float64)
    model = base.clone()
    model[2, 3] = 4.0  # one row changes a lot
    model[0, 0] = 0.01
    got = run("arcee_fusion", base, [model])
    p = torch.softmax(model, -1) + 1e-8
    q = torch.softmax(base, -1) + 1e-8
    importance = ((model - base).abs() * (p * (p / q).log()).sum(-1, keepdim=True)).numpy().ravel()
    s = np.sort(importance)
    q1, med, q3 = (s[int(x * (s.size - 1))] for x in (0.25, 0.5, 0.75))
    keep = (importance >= med + 1.5 * (q3 - q1)).reshape(5, 8)
    want = np.where(keep, model.numpy(), base.numpy())
    assert np.allclose(got.numpy(), want)
    # The large change is taken; everything below the threshold keeps the base.
    assert got[2, 3] == 4.0


def numpy_slerp(t, a, b):
    a, b = a.ravel(), b.ravel()
    ua, ub = a / np.linalg.norm(a), b / np.linalg.norm(b)
    theta = math.acos(np.clip(ua @ ub, -1, 1))
    return (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)


def test_nuslerp_weights_give_t_and_base_takes_deltas():
    a, b = rand(3, 4, seed=1), rand(3, 4, seed=2)
    got = run("nuslerp", None, [a, b], weight=[1.0, 3.0])
    assert np.allclose(got.numpy().ravel(), numpy_slerp(0.75, a.numpy(), b.numpy()))
    base = rand(3, 4, seed=3)
    got = run("nuslerp", base, [a, b], weight=[1.0, 1.0])
    want = base.numpy().ravel() + numpy_slerp(0.5, (a - base).numpy(), (b - base).numpy())
    assert np.allclose(got.numpy().ravel(), want)
    # Row-wise: each column (slices along dim 0) interpolated on its own.
    got = run("nuslerp", None, [a, b], weight=[1.0, 1.0], nuslerp_flatten=False, nuslerp_row_wise=True)
    for j in range(4):
        assert np.allclose(got[:, j].numpy(), numpy_slerp(0.5, a[:, j].numpy(), b[:, j].numpy()))


def test_multislerp_of_two_orthogonal_unit_vectors_is_their_bisector():
    a, b = T(1.0, 0.0), T(0.0, 1.0)
    got = run("multislerp", None, [a, b], weight=[1.0, 1.0])
    h = math.sqrt(0.5)
    assert torch.allclose(got, T(h, h), atol=1e-7)
    # Weighted: the formula (tangent space at the normalized weighted mean, exp map back).
    a, b, c = rand(5, seed=1), rand(5, seed=2), rand(5, seed=3)
    w = np.array([0.2, 0.3, 0.5])
    x = np.stack([a.numpy(), b.numpy(), c.numpy()])
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    u = x / (norms + 1e-8)
    m = (u * w[:, None]).sum(0)
    m /= np.linalg.norm(m)
    tang = ((u - (u @ m)[:, None] * m) * w[:, None]).sum(0)
    length = np.linalg.norm(tang) + 1e-8
    want = (m * math.cos(length) + tang * math.sin(length) / length) * (norms.ravel() * w).sum()
    got = run("multislerp", None, [a, b, c], weight=[0.2, 0.3, 0.5])
    assert np.allclose(got.numpy(), want)


def test_karcher_mean_of_two_directions_is_the_geodesic_midpoint():
    a, b = T(2.0, 0.0), T(0.0, 4.0)
    got = run("karcher", None, [a, b], max_iter=50, tol=1e-12)
    # Directions e1, e2: their spherical mean is the bisector; scale is the mean norm 3.
    h = math.sqrt(0.5)
    assert torch.allclose(got, T(3 * h, 3 * h), atol=1e-9)
    # Three directions in a plane at angles 0, 60, 90 deg: the Karcher mean of angles on a
    # circle (no wrap-around) is their mean, 50 deg.
    angles = [0.0, math.pi / 3, math.pi / 2]
    vs = [T(math.cos(x), math.sin(x)) for x in angles]
    got = run("karcher", None, vs, max_iter=100, tol=1e-12)
    mean = sum(angles) / 3
    assert torch.allclose(got, T(math.cos(mean), math.sin(mean)), atol=1e-9)


def test_model_stock_filter_wise_gives_one_ratio_per_row():
    base = torch.zeros(2, 2, dtype=torch.float64)
    # Row 0: identical deltas (cos 1 -> t = 1, the average). Row 1: orthogonal (cos 0 -> base).
    m1 = T(1.0, 0.0, 1.0, 0.0).view(2, 2)
    m2 = T(1.0, 0.0, 0.0, 1.0).view(2, 2)
    got = run("model_stock", base, [m1, m2], filter_wise=True)
    assert torch.allclose(got, T(1.0, 0.0, 0.0, 0.0).view(2, 2))
    # Whole tensor: cos = 1/2, t = 2(1/2)/(1 + 1/2) = 2/3 of the average.
    got = run("model_stock", base, [m1, m2])
    assert torch.allclose(got, (m1 + m2) / 2 * (2 / 3))


def test_every_operator_is_usable_as_an_arm():
    from merging.registry import list_operators

    for spec in list_operators():
        n = max(spec.min_models, 2 if spec.max_models is None or spec.max_models >= 2 else 1)
        params = {"t": 0.01} if spec.name == "nearswap" else {}
        resolved = validate_params(spec.name, params, n)
        assert set(resolved) == {p.name for p in spec.params}


def test_nuslerp_and_multislerp_take_a_base_as_origin_not_as_a_model():
    from merging.recipe import Recipe

    r = Recipe.from_yaml("merge_method: nuslerp\nbase_model: b\nmodels: [{model: x}, {model: y}]\n").resolve()
    assert r.base == "b" and r.models == ["x", "y"]
    with pytest.raises(MergeError, match="exactly 2 model"):
        Recipe.from_yaml("merge_method: nuslerp\nbase_model: b\nmodels: [{model: x}]\n").validate()
    assert Recipe.from_arm("multislerp", {}, ["x", "y"], base="b").resolve().base == "b"
