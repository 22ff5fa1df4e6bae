"""The built-in merge operators: pure functions `(base, tensors, params) -> tensor`.

Every function gets float tensors already on the engine's device (float32 unless the
recipe asks for float64) and returns the merged tensor in the same dtype; nothing here
reads files or picks devices. tau_i = theta_i - theta_0 is model i's delta from the base.

torch is imported inside the functions: the registry imports this module to read the
operators' declarations, and that must stay cheap for the bandit's `propose`.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping, Sequence

from merging.errors import MergeError
from merging.spec import OperatorParams, Param, merge_operator

# Cosine above which two vectors are treated as colinear by slerp: sin(omega) is then too
# small for the spherical formula to be accurate, and lerp is within rounding of it.
SLERP_COLINEAR = 0.9995


# -- parameter declarations shared by several operators -----------------------------------

def _weight() -> Param:
    return Param("weight", 1.0, per_model=True, help="model's weight")


def _density(default: float = 1.0) -> Param:
    return Param("density", default, per_model=True, minimum=0.0, maximum=1.0,
                 help="share of each delta kept")


def _lambda() -> Param:
    return Param("lambda", 1.0, help="scale of the merged delta")


def _normalize(default: bool) -> Param:
    return Param("normalize", default, type="bool", help="divide by the sum of the weights")


def _rescale(default: bool) -> Param:
    return Param("rescale", default, type="bool",
                 help="after dropping, scale the delta back to its L1 norm (or by 1/p with rescale_inverse_p)")


def _rescale_inverse_p() -> Param:
    return Param("rescale_inverse_p", False, type="bool",
                 help="rescale as the papers do: each kept entry divided by its keep probability")


def _int8_mask() -> Param:
    # Accepted for recipe compatibility: it sets the dtype of an intermediate sign mask,
    # which here is boolean throughout, so it changes no value.
    return Param("int8_mask", False, type="bool", help="accepted; masks are boolean here (no effect on values)")


def _gamma() -> Param:
    return Param("gamma", 0.01, per_model=True, minimum=0.0, maximum=1.0, help="share of largest |delta| dropped")


def _epsilon() -> Param:
    return Param("epsilon", 0.15, per_model=True, minimum=0.0, maximum=1.0,
                 help="spread of keep probabilities around density")


# Below this |sum of weights| a normalizing division is skipped (divisor 1), as the merge
# toolkits do for task-arithmetic methods.
WEIGHT_SUM_EPS = 1e-8


def _weights_nonzero(g: Mapping[str, Any], models: Sequence[Mapping[str, Any]]) -> None:
    """normalize divides by the sum of the weights; catch a zero sum before any work."""
    if g.get("normalize") and models and sum(m["weight"] for m in models) == 0:
        raise MergeError("the weights sum to 0, so normalize cannot divide by them (set normalize=false)")


def _density_positive(g: Mapping[str, Any], models: Sequence[Mapping[str, Any]]) -> None:
    """DARE divides kept entries by density; zero would keep nothing and divide by zero."""
    if any(m["density"] <= 0 for m in models):
        raise MergeError("density must be > 0 for random dropping")


def _della_band(g: Mapping[str, Any], models: Sequence[Mapping[str, Any]]) -> None:
    """MagPrune's keep probabilities run from density - epsilon to density + epsilon; both
    ends must be real probabilities (as in the merge toolkits, which refuse otherwise)."""
    for m in models:
        if m["density"] < 1 and not (0 < m["density"] - m["epsilon"] and m["density"] + m["epsilon"] < 1):
            raise MergeError(f"density +- epsilon must lie inside (0, 1), got density {m['density']} "
                             f"and epsilon {m['epsilon']}")


# -- building blocks -----------------------------------------------------------------------

# Below this many entries a plain kthvalue is as fast as anything cleverer.
_SELECT_DIRECT = 1 << 18
_SELECT_SAMPLE = 1 << 16


def kth_largest(flat, k: int):
    """The k-th largest value of a 1-D tensor, exactly, without sorting it.

    kthvalue on a large tensor is single-threaded and copies it. Instead, a fixed random
    sample brackets the answer between two of its order statistics; one counting pass
    finds how many entries lie above the bracket and the few inside it are selected
    exactly. Should the bracket miss (it is ~8 standard deviations wide), the full
    kthvalue is used, so the result is always exact."""
    import torch

    n = flat.numel()
    if n <= _SELECT_DIRECT:
        return flat.kthvalue(n - k + 1).values
    m = _SELECT_SAMPLE
    g = torch.Generator(device=flat.device).manual_seed(0x5EED)
    sample = flat[torch.randint(n, (m,), generator=g, device=flat.device)]
    q = k / n
    rank = (1.0 - q) * m  # where the answer sits in the sample, ascending
    margin = 4.0 * math.sqrt(m * q * (1.0 - q)) + 16
    lo_rank = int(max(1, math.floor(rank - margin)))
    hi_rank = int(min(m, math.ceil(rank + margin)))
    lo = sample.kthvalue(lo_rank).values
    hi = sample.kthvalue(hi_rank).values
    # count_nonzero: summing a bool tensor takes a slow path in torch on CPU.
    above = int(torch.count_nonzero(flat > hi))
    need = k - above
    if need >= 1:
        band = flat[(flat >= lo) & (flat <= hi)]
        if need <= band.numel():
            return band.kthvalue(band.numel() - need + 1).values
    return flat.kthvalue(n - k + 1).values


def top_k_mask(magnitude, k: int):
    """Boolean mask of the k largest entries of `magnitude` (any shape).

    Found by selection (kth_largest), never a sort. Entries equal to the threshold are
    taken in index order until k are kept, so the mask has exactly k entries and the
    choice among equal magnitudes is deterministic (the same rule as a stable descending
    sort)."""
    import torch

    n = magnitude.numel()
    if k <= 0:
        return torch.zeros_like(magnitude, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(magnitude, dtype=torch.bool)
    flat = magnitude.reshape(-1)
    threshold = kth_largest(flat, k)
    mask = flat > threshold
    missing = k - int(torch.count_nonzero(mask))
    if missing > 0:
        ties = torch.nonzero(flat == threshold).squeeze(1)[:missing]
        mask[ties] = True
    return mask.view(magnitude.shape)


def trim_count(density: float, n: int) -> int:
    """How many entries TIES trimming keeps: int(density * n), but at least one when
    density > 0 (as the merge toolkits do), none when density <= 0."""
    if density <= 0 or n == 0:
        return 0
    return max(1, int(density * n))


def trim_magnitude(delta, density: float):
    """TIES trimming: keep the top trim_count(density) entries of |delta|, zero the rest."""
    if density >= 1:
        return delta
    return delta * top_k_mask(delta.abs(), trim_count(density, delta.numel()))


def breadcrumbs_mask(delta, density: float, gamma: float):
    """Keep int(density*numel) entries of |delta|: the largest below the top int(gamma*numel).

    When density + gamma > 1 the density wins: fewer of the largest are dropped so that the
    kept count stays int(density*numel) (the merge toolkits' rule)."""
    import torch

    n = delta.numel()
    if density >= 1:
        return torch.ones_like(delta, dtype=torch.bool)
    keep = int(density * n)
    top = min(int(gamma * n), n - keep)
    magnitude = delta.abs()
    mask = top_k_mask(magnitude, top + keep)
    if top > 0:
        mask &= ~top_k_mask(magnitude, top)
    return mask


def l1_rescaled(original, masked, eps: float = 1e-7):
    """masked scaled so its L1 norm equals original's: the merge toolkits' DARE/DELLA rescale.
    Left as is when either norm is below eps (nothing to match)."""
    before = float(original.abs().sum())
    after = float(masked.abs().sum())
    if before < eps or after < eps:
        return masked
    return masked.mul_(before / after)


def generator_for(params: OperatorParams, model_index: int, device):
    """A torch generator seeded from the merge seed, the tensor's name and the model's
    position: the same recipe draws the same masks on every run, whatever the order in
    which tensors are merged. hashlib, because Python's hash() changes between runs."""
    import torch

    digest = hashlib.sha256(f"{params.seed}\0{params.tensor_name}\0{model_index}".encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def dare_drop(delta, density: float, rescale: bool, generator, inverse_p: bool = False):
    """Keep each entry with probability density. rescale: the kept delta is scaled back to
    the L1 norm of the whole delta (default, as mergekit), or each kept entry divided by
    density when inverse_p (the DARE paper)."""
    import torch

    if density >= 1.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator, device=delta.device, dtype=delta.dtype) < density
    out = delta * keep
    if not rescale:
        return out
    return out.div_(density) if inverse_p else l1_rescaled(delta, out)


def della_drop(delta, density: float, epsilon: float, rescale: bool, generator, inverse_p: bool = False):
    """MagPrune: in each row the keep probability rises linearly with the rank of |delta|,
    from density - epsilon (smallest) to density + epsilon (largest), clipped to [0, 1].
    rescale: the kept delta scaled back to the whole delta's L1 norm (default, as
    mergekit), or each kept entry divided by its own probability when inverse_p (the paper)."""
    import torch

    if density >= 1.0:
        return delta
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(-1, delta.shape[-1])
    n = rows.shape[-1]
    if n > 1:
        # Ranks within a row are what MagPrune is defined on; one argsort per row gives them.
        order = rows.abs().argsort(dim=-1)
        ranks = torch.empty_like(order)
        ranks.scatter_(-1, order, torch.arange(n, device=rows.device).expand_as(order))
        p = (density - epsilon) + (2.0 * epsilon / (n - 1)) * ranks.to(rows.dtype)
    else:
        p = torch.full_like(rows, density)
    p = p.clamp_(0.0, 1.0)
    keep = torch.rand(rows.shape, generator=generator, device=rows.device, dtype=rows.dtype) < p
    if rescale and inverse_p:
        out = torch.where(keep, rows / p.clamp(min=torch.finfo(rows.dtype).tiny), torch.zeros_like(rows))
    else:
        out = rows * keep
        if rescale:
            out = l1_rescaled(rows, out)
    return out.view(delta.shape)


def ties_combine(deltas, weights: Sequence[float], normalize: bool):
    """TIES sign election and disjoint merge of (already trimmed) deltas.

    The elected sign of an entry is the sign of sum_i w_i delta_i (zero counts as +). Model
    i's entry counts where w_i delta_i is non-zero with the elected sign; the result is the
    sum of counted w_i delta_i, divided by the sum of counted w_i when normalize (0 where
    nothing counts). The sign of the weighted delta is used so that a model with weight 0
    has no vote.

    The deltas are overwritten: they are the caller's temporaries, and working in place
    keeps peak memory near one tensor per model."""
    import torch

    merged = torch.empty_like(deltas[0])
    flat_out = merged.view(-1)
    flats = [d.reshape(-1) for d in deltas]
    # Elementwise from here on: done in slices so temporaries stay small whatever the
    # tensor's size.
    for start in range(0, flat_out.numel(), _CHUNK):
        stop = start + _CHUNK
        _ties_slice([f[start:stop] for f in flats], weights, normalize, flat_out[start:stop])
    return merged


_CHUNK = 1 << 21


def _ties_slice(deltas, weights, normalize, out) -> None:
    import torch

    # Each product rounded on its own before summing (no fused multiply-add): the elected
    # sign of an entry whose weighted deltas cancel then does not depend on the CPU's
    # vector instructions, and agrees with the plain formula.
    total = deltas[0] * weights[0]
    product = torch.empty_like(total)
    for d, w in zip(deltas[1:], weights[1:]):
        torch.mul(d, w, out=product)
        total.add_(product)
    sign = torch.where(total >= 0, 1.0, -1.0).to(total.dtype)
    # Contributions turned to the elected sign: a counted one is then > 0, and clamping at
    # 0 drops the rest. Rounding is unchanged, since IEEE arithmetic is symmetric under
    # negation.
    out.zero_()
    divisor = total.zero_() if normalize else None
    for d, w in zip(deltas, weights):
        if w == 0:
            continue
        d.mul_(sign).mul_(w).clamp_(min=0)
        out.add_(d)
        if divisor is not None:
            divisor.add_(d > 0, alpha=w)
    out.mul_(sign)
    if divisor is not None:
        nothing = divisor == 0
        out.div_(divisor.masked_fill_(nothing, 1.0)).masked_fill_(nothing, 0.0)


def trimmed_deltas(base, tensors, densities: Sequence[float], rescale: bool = False) -> list:
    """tau_i trimmed to the top trim_count(density_i) magnitudes, as fresh tensors
    (rescale: scaled back to the untrimmed delta's L1 norm)."""
    out = []
    for t, density in zip(tensors, densities):
        delta = t - base
        if density < 1:
            mask = top_k_mask(delta.abs(), trim_count(density, delta.numel()))
            delta = l1_rescaled(delta, delta * mask) if rescale else delta.mul_(mask)
        out.append(delta)
    return out


def weighted_delta_sum(deltas, weights: Sequence[float], normalize: bool):
    """sum_i w_i delta_i, divided by sum_i w_i when normalize (skipped when that sum is ~0)."""
    import torch

    total = torch.zeros_like(deltas[0])
    for d, w in zip(deltas, weights):
        total.add_(d, alpha=w)
    if normalize and abs(sum(weights)) >= WEIGHT_SUM_EPS:
        total /= sum(weights)
    return total


def _apply(base, merged_delta, lam: float):
    """base + lam * merged_delta, in place on the (operator-owned) merged delta."""
    if lam != 1.0:
        merged_delta.mul_(lam)
    return merged_delta.add_(base)


def _column(params: Mapping[str, Any], name: str) -> list:
    return list(params[name])


# -- operators -----------------------------------------------------------------------------

@merge_operator("linear", [_weight(), _normalize(True)], base="unused", min_models=1,
                checks=(_weights_nonzero,), description="weighted average: sum w_i theta_i / sum w_i")
def linear_merge(base, tensors, params):
    import torch

    weights = _column(params, "weight")
    # Started from the first product rather than from zeros: one pass fewer over memory,
    # and the same rounding (0 + w*t is w*t).
    out = torch.mul(tensors[0], weights[0])
    for t, w in zip(tensors[1:], weights[1:]):
        out.add_(t, alpha=w)
    if params["normalize"]:
        out /= sum(weights)
    return out


def _gta_params(*, density: bool, normalize: bool, rescale: bool, extra=()) -> list:
    """The parameters every task-arithmetic-family operator takes, with its own defaults."""
    params = [_weight()] + ([_density()] if density else []) + list(extra)
    return params + [_lambda(), _normalize(normalize), _rescale(rescale), _rescale_inverse_p(), _int8_mask()]


@merge_operator("task_arithmetic", _gta_params(density=False, normalize=False, rescale=False), min_models=1,
                description="theta_0 + lambda * sum w_i tau_i (divided by sum w_i when normalize)")
def task_arithmetic_merge(base, tensors, params):
    deltas = [t - base for t in tensors]
    return _apply(base, weighted_delta_sum(deltas, _column(params, "weight"), params["normalize"]),
                  params["lambda"])


@merge_operator("ties", _gta_params(density=True, normalize=True, rescale=False), min_models=1,
                description="TIES: trim deltas to top density by magnitude, elect signs, disjoint mean")
def ties_merge(base, tensors, params):
    deltas = trimmed_deltas(base, tensors, params["density"], params["rescale"])
    return _apply(base, ties_combine(deltas, _column(params, "weight"), params["normalize"]),
                  params["lambda"])


@merge_operator("dare_ties", _gta_params(density=True, normalize=False, rescale=True),
                min_models=1, randomized=True, checks=(_density_positive,),
                description="DARE random drop (keep prob. density, L1 rescale) + TIES sign election")
def dare_ties_merge(base, tensors, params):
    return _apply(base, ties_combine(_dare_deltas(base, tensors, params), _column(params, "weight"),
                                     params["normalize"]), params["lambda"])


def _dare_deltas(base, tensors, params):
    """Each model's delta with entries dropped at random (keep prob. density), seeded per model."""
    return [dare_drop(t - base, d, params["rescale"], generator_for(params, i, t.device), params["rescale_inverse_p"])
            for i, (t, d) in enumerate(zip(tensors, params["density"]))]


@merge_operator("dare_linear", _gta_params(density=True, normalize=False, rescale=True),
                min_models=1, randomized=True, checks=(_density_positive,),
                description="DARE random drop (keep prob. density, L1 rescale) + task arithmetic")
def dare_linear_merge(base, tensors, params):
    return _apply(base, weighted_delta_sum(_dare_deltas(base, tensors, params), _column(params, "weight"),
                                           params["normalize"]), params["lambda"])


@merge_operator("breadcrumbs", _gta_params(density=True, normalize=False, rescale=False, extra=[_gamma()]),
                min_models=1,
                description="Model Breadcrumbs: drop the top gamma and keep the next density of |tau|; task arithmetic")
def breadcrumbs_merge(base, tensors, params):
    return _apply(base, weighted_delta_sum(_breadcrumbs_deltas(base, tensors, params), _column(params, "weight"),
                                           params["normalize"]), params["lambda"])


def _breadcrumbs_deltas(base, tensors, params):
    """Each model's delta keeping its `density` share of magnitudes below the top `gamma` share."""
    deltas = []
    for t, d, g in zip(tensors, params["density"], params["gamma"]):
        delta = t - base
        masked = delta * breadcrumbs_mask(delta, d, g)
        deltas.append(l1_rescaled(delta, masked) if params["rescale"] else masked)
    return deltas


@merge_operator("breadcrumbs_ties", _gta_params(density=True, normalize=False, rescale=False, extra=[_gamma()]),
                min_models=1, description="Model Breadcrumbs masks combined with TIES sign election")
def breadcrumbs_ties_merge(base, tensors, params):
    return _apply(base, ties_combine(_breadcrumbs_deltas(base, tensors, params), _column(params, "weight"),
                                     params["normalize"]), params["lambda"])


def _della_deltas(base, tensors, params):
    return [della_drop(t - base, d, e, params["rescale"], generator_for(params, i, t.device), params["rescale_inverse_p"])
            for i, (t, d, e) in enumerate(zip(tensors, params["density"], params["epsilon"]))]


@merge_operator("della", _gta_params(density=True, normalize=True, rescale=True, extra=[_epsilon()]),
                min_models=1, randomized=True, checks=(_density_positive, _della_band),
                description="DELLA: magnitude-ranked keep probabilities per row, rescale, TIES sign election")
def della_merge(base, tensors, params):
    return _apply(base, ties_combine(_della_deltas(base, tensors, params), _column(params, "weight"),
                                     params["normalize"]), params["lambda"])


@merge_operator("della_linear", _gta_params(density=True, normalize=False, rescale=True, extra=[_epsilon()]),
                min_models=1, randomized=True, checks=(_density_positive, _della_band),
                description="DELLA drop (magnitude-ranked keep probabilities) + task arithmetic, no sign election")
def della_linear_merge(base, tensors, params):
    return _apply(base, weighted_delta_sum(_della_deltas(base, tensors, params), _column(params, "weight"),
                                           params["normalize"]), params["lambda"])


@merge_operator("slerp", [Param("t", 0.5, help="0 gives the first endpoint, 1 the second")],
                base="optional", min_models=2, max_models=2,
                description="spherical interpolation of two models (the base is the first endpoint when named)")
def slerp_merge(base, tensors, params):
    import torch

    a, b = (base, tensors[0]) if base is not None else (tensors[0], tensors[1])
    t = float(params["t"])
    va, vb = a.reshape(-1), b.reshape(-1)
    na, nb = float(torch.linalg.vector_norm(va)), float(torch.linalg.vector_norm(vb))
    # A zero vector has no direction: interpolate linearly, as for colinear vectors.
    cos = float(torch.dot(va, vb)) / (na * nb) if na > 0 and nb > 0 else 1.0
    if abs(cos) > SLERP_COLINEAR:
        return (1.0 - t) * a + t * b
    omega = math.acos(max(-1.0, min(1.0, cos)))
    s = math.sin(omega)
    return (math.sin((1.0 - t) * omega) / s) * a + (math.sin(t * omega) / s) * b


@merge_operator("model_stock", [], min_models=2,
                description="Model Stock: t = N c / (1 + (N-1) c) from the mean pairwise cosine c of the deltas")
def model_stock_merge(base, tensors, params):
    import torch

    deltas = [(t - base).reshape(-1) for t in tensors]
    norms = [float(torch.linalg.vector_norm(d)) for d in deltas]
    n = len(deltas)
    cosines = []
    for i in range(n):
        for j in range(i + 1, n):
            # A zero delta has no direction; count it as orthogonal.
            denom = norms[i] * norms[j]
            cosines.append(float(torch.dot(deltas[i], deltas[j])) / denom if denom > 0 else 0.0)
    c = sum(cosines) / len(cosines)
    denominator = 1.0 + (n - 1) * c
    ratio = n * c / denominator if denominator != 0 else 0.0
    mean = torch.stack(tensors).mean(dim=0)
    return ratio * mean + (1.0 - ratio) * base
