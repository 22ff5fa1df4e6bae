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
    return _select(flat, k)[0]


def _select(flat, k: int):
    """(k-th largest value, its bracket) where the bracket, when the sampled path found the
    value, is (count of entries above it, ascending indices of the entries inside it,
    their values, the mask of the entries above it); None otherwise. top_k_mask builds
    its mask from the bracket instead of passing over the whole tensor again."""
    import torch

    n = flat.numel()
    if n <= _SELECT_DIRECT:
        return flat.kthvalue(n - k + 1).values, None
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
    over = flat > hi
    above = int(torch.count_nonzero(over))
    need = k - above
    if need >= 1:
        # [lo, hi] as (>= lo) and not (> hi): one more pass over the floats, not two.
        inside = torch.nonzero((flat >= lo).logical_and_(over.logical_not())).squeeze(1)
        if need <= inside.numel():
            band = flat[inside]
            return band.kthvalue(band.numel() - need + 1).values, (above, inside, band, over)
    return flat.kthvalue(n - k + 1).values, None


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
    threshold, bracket = _select(flat, k)
    if bracket is None:
        mask = flat > threshold
        missing = k - int(torch.count_nonzero(mask))
        if missing > 0:
            ties = torch.nonzero(flat == threshold).squeeze(1)[:missing]
            mask[ties] = True
    else:
        # Entries above the threshold are those above the bracket and those inside it
        # above the threshold; every entry equal to it lies inside: the ties are taken
        # there, in index order, without another pass over the whole tensor.
        above, inside, band, mask = bracket
        greater = band > threshold
        mask[inside[greater]] = True
        missing = k - above - int(torch.count_nonzero(greater))
        if missing > 0:
            mask[inside[band == threshold][:missing]] = True
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

# Elements per slice of the chunked linear merge: a slice of every input and the
# accumulator stay in cache, and no op is split across threads (torch's grain size is
# 32768), so there is no thread barrier per slice: on a busy machine those barriers cost
# more than the arithmetic. Python overhead stays ~20 % of the work.
LINEAR_CHUNK = 1 << 15


@merge_operator("linear", [_weight(), _normalize(True)], base="unused", min_models=1,
                checks=(_weights_nonzero,), native_inputs=True,
                description="weighted average: sum w_i theta_i / sum w_i")
def linear_merge(base, tensors, params):
    """sum_i w_i theta_i (divided by sum_i w_i when normalize), computed in the compute
    dtype. Inputs may come in their stored dtype: each slice of LINEAR_CHUNK entries is
    converted, accumulated and converted to the output dtype while it is in cache, with
    the same elementwise operations (so the same rounding) as on whole float32 tensors."""
    import torch

    weights = _column(params, "weight")
    compute = getattr(params, "compute_dtype", None) or tensors[0].dtype
    out_dtype = getattr(params, "out_dtype", None) or compute
    divisor = sum(weights) if params["normalize"] else None
    # x * 1 and x / 1 are exact in IEEE arithmetic: those passes can be skipped.
    if divisor == 1.0:
        divisor = None
    flats = [t.reshape(-1) for t in tensors]
    n = flats[0].numel()
    result = torch.empty(n, dtype=out_dtype, device=flats[0].device)
    own = out_dtype != compute
    acc_buffer = torch.empty(min(n, LINEAR_CHUNK), dtype=compute, device=result.device) if own else None
    tmp_buffer = None
    for start in range(0, n, LINEAR_CHUNK):
        stop = min(n, start + LINEAR_CHUNK)
        acc = acc_buffer[: stop - start] if own else result[start:stop]
        acc.copy_(flats[0][start:stop])
        if weights[0] != 1.0:
            acc.mul_(weights[0])
        for flat, w in zip(flats[1:], weights[1:]):
            piece = flat[start:stop]
            if piece.dtype != compute:
                if tmp_buffer is None:
                    tmp_buffer = torch.empty(min(n, LINEAR_CHUNK), dtype=compute, device=result.device)
                piece = tmp_buffer[: stop - start].copy_(piece)
            acc.add_(piece, alpha=w)
        if divisor is not None:
            acc.div_(divisor)
        if own:
            result[start:stop].copy_(acc)
    return result.view(tensors[0].shape)


def _gta_params(*, density: bool, normalize: bool, rescale: bool, extra=()) -> list:
    """The parameters every task-arithmetic-family operator takes, with its own defaults."""
    params = [_weight()] + ([_density()] if density else []) + list(extra)
    return params + [_lambda(), _normalize(normalize), _rescale(rescale), _rescale_inverse_p(), _int8_mask()]


def _ignored_density() -> Param:
    # mergekit declares density for every task-arithmetic method; plain task arithmetic
    # drops nothing, so a recipe may give it and it changes nothing (as there).
    return Param("density", 1.0, per_model=True, minimum=0.0, maximum=1.0,
                 help="accepted as in mergekit; task arithmetic drops nothing (no effect)")


@merge_operator("task_arithmetic", _gta_params(density=False, normalize=False, rescale=False,
                                               extra=[_ignored_density()]), min_models=1,
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


@merge_operator("model_stock", [Param("filter_wise", False, type="bool",
                                       help="one ratio per row instead of one per tensor")], min_models=2,
                description="Model Stock: t = N c / (1 + (N-1) c) from the mean pairwise cosine c of the deltas")
def model_stock_merge(base, tensors, params):
    import torch

    shape = base.shape
    if params.get("filter_wise"):
        # One ratio per row (the last dimension is the filter's inputs).
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [t.unsqueeze(0) if t.dim() == 1 else t for t in tensors]
    else:
        w0, ws = base.reshape(-1), [t.reshape(-1) for t in tensors]
    deltas = [w - w0 for w in ws]
    n = len(deltas)
    cosines = []
    for i in range(n):
        for j in range(i + 1, n):
            # A zero delta has no direction: its cosine is 0 (the norm product is floored).
            denom = (torch.linalg.vector_norm(deltas[i], dim=-1) * torch.linalg.vector_norm(deltas[j], dim=-1))
            cosines.append(((deltas[i] * deltas[j]).sum(dim=-1) / denom.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    denominator = 1 + (n - 1) * c
    # Where the denominator vanishes there is no finite estimate: keep the base there.
    singular = denominator.abs() < 1e-6
    ratio = torch.where(singular, torch.zeros_like(c), n * c / torch.where(singular, torch.ones_like(c), denominator))
    mean = sum(ws) / n
    return (ratio * mean + (1 - ratio) * w0).reshape(shape)


def _sign_consensus(deltas):
    """Boolean masks: entry of delta_i counts when its sign equals the sign of sum_i delta_i
    (zero sums elect +; zero entries never count)."""
    import torch

    total = deltas.sum(dim=0)
    elected = torch.where(total >= 0, 1.0, -1.0).to(deltas.dtype)
    return deltas.sign() == elected


@merge_operator("sce", [Param("select_topk", 1.0, minimum=0.0, maximum=1.0,
                              help="share of entries kept, those whose deltas vary most across models"),
                        _int8_mask()],
                min_models=1, description="SCE: select high-variance entries, weight models by mean squared delta, "
                                          "elect signs, erase disagreeing entries")
def sce_merge(base, tensors, params):
    import torch

    deltas = torch.stack([t - base for t in tensors])
    topk = params["select_topk"]
    if topk < 1:
        variance = deltas.var(dim=0, unbiased=False)
        k = int(int(torch.count_nonzero(variance)) * topk)
        deltas = deltas * top_k_mask(variance.abs(), k).to(deltas.dtype)
    keep = _sign_consensus(deltas)
    energy = deltas.square().reshape(deltas.shape[0], -1).mean(dim=1)
    total = float(energy.sum())
    weights = torch.full_like(energy, 1.0 / len(tensors)) if abs(total) < 1e-6 else energy / total
    weights = weights.view(-1, *([1] * base.dim()))
    counted = weights * keep
    merged = (deltas * counted).sum(dim=0) / counted.sum(dim=0).clamp(min=1e-6)
    return base + merged


@merge_operator("nearswap", [Param("t", None, minimum=0.0, help="distance scale: |a-b| below t takes the model's value")],
                min_models=1, max_models=1,
                description="NearSwap: w = clamp(t / |base - model|, 0, 1); base + w (model - base)")
def nearswap_merge(base, tensors, params):
    other = tensors[0]
    weight = (params["t"] / (base - other).abs().clamp(min=1e-6)).clamp(0.0, 1.0)
    return weight * other + (1 - weight) * base


def exact_quantile(flat, q: float):
    """The entry at position floor(q * (n-1)) of the sorted values."""
    index = int(q * (flat.numel() - 1))
    return flat.kthvalue(index + 1).values


@merge_operator("arcee_fusion", [], min_models=1, max_models=1,
                description="Arcee Fusion: take the model's entries whose |delta| x KL(softmax rows) is an upper outlier")
def arcee_fusion_merge(base, tensors, params):
    import torch

    model = tensors[0]
    eps = 1e-8
    p = torch.softmax(model, dim=-1) + eps
    q = torch.softmax(base, dim=-1) + eps
    kl = (p * (p / q).log()).sum(dim=-1, keepdim=True)
    importance = (model - base).abs() * kl
    flat = importance.reshape(-1)
    # Exact quartiles (mergekit samples 1M entries with replacement above that size).
    q1, median, q3 = (exact_quantile(flat, x) for x in (0.25, 0.5, 0.75))
    threshold = median + 1.5 * (q3 - q1)
    return base + (model - base) * (importance >= threshold).to(base.dtype)


@merge_operator("passthrough", [Param("scale", 1.0, per_model=True, help="factor applied to the tensor")],
                base="unused", min_models=1, max_models=1,
                description="passthrough: one model's tensor (times scale); with slices, stacks layers")
def passthrough_merge(base, tensors, params):
    scale = params["scale"][0]
    return tensors[0] if scale == 1.0 else tensors[0] * scale


def spherical_interpolation(t: float, v0, v1, *, dim: int = -1, flatten: bool = True, eps: float = 1e-8):
    """slerp of v0 and v1 along `dim` (each slice along it its own pair of vectors), or of the
    flattened tensors; lerp where the vectors are (anti)colinear."""
    import torch

    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * v0 + t * v1, spherical)
    if dim != -1 and not flatten:
        out = out.transpose(dim, -1)
    return out.reshape(shape)


@merge_operator("nuslerp", [_weight(), Param("nuslerp_row_wise", False, type="bool", help="slerp each column"
                                                                                                  " (rows of dim 0)"),
                            Param("nuslerp_flatten", True, type="bool", help="slerp the flattened tensors")],
                base="origin", min_models=2, max_models=2,
                description="slerp of two models (or of their deltas from the base) at t = w2 / (w1 + w2)")
def nuslerp_merge(base, tensors, params):
    w = params["weight"]
    total = w[0] + w[1]
    t = 0.5 if abs(total) < 1e-6 else w[1] / total
    dim = 0 if params["nuslerp_row_wise"] else -1
    flatten = params["nuslerp_flatten"]
    if base is None:
        return spherical_interpolation(t, tensors[0], tensors[1], dim=dim, flatten=flatten)
    return base + spherical_interpolation(t, tensors[0] - base, tensors[1] - base, dim=dim, flatten=flatten)


@merge_operator("multislerp", [_weight(), Param("normalize_weights", True, type="bool", help="weights divided by their sum"),
                               Param("eps", 1e-8, minimum=0.0, help="guard against division by zero")],
                base="origin", min_models=1,
                description="barycentric interpolation on the hypersphere (tangent space at the weighted mean)")
def multislerp_merge(base, tensors, params):
    import torch

    if len(tensors) == 1:
        return tensors[0].clone()
    eps = params["eps"]
    stacked = torch.stack(tensors)
    if base is not None:
        stacked = stacked - base
    flat = stacked.reshape(len(tensors), -1)
    weights = torch.tensor(params["weight"], dtype=flat.dtype, device=flat.device)
    if params["normalize_weights"]:
        weights = weights / weights.sum()
    norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise MergeError("multislerp: the weighted mean direction is zero (opposite models with balanced weights)")
        out = (flat[0] * weights[0] + flat[1] * weights[1]).view(base.shape if base is not None else tensors[0].shape)
        return out + base if base is not None else out
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * weights.view(-1, 1)).sum(0)
    length = torch.linalg.vector_norm(tangent) + eps
    out = mean * torch.cos(length) + tangent * (torch.sin(length) / length)
    out = (out * (norms.squeeze(-1) * weights).sum()).view(tensors[0].shape)
    return out + base if base is not None else out


@merge_operator("karcher", [Param("max_iter", 10, type="int", minimum=1, help="iterations of the Riemannian mean"),
                            Param("tol", 1e-5, minimum=0.0, help="stop when the tangent step is below this")],
                base="unused", min_models=1,
                description="Karcher (Riemannian) mean of the models' directions, scaled by their mean norm")
def karcher_merge(base, tensors, params):
    import torch

    n = len(tensors)
    if n == 1:
        return tensors[0].clone()
    tol, alphas = params["tol"], [1.0 / n] * n
    norms = [torch.linalg.vector_norm(t) for t in tensors]
    units = [torch.zeros_like(t) if float(m) == 0.0 else t / m for t, m in zip(tensors, norms)]
    valid = [i for i, m in enumerate(norms) if float(m) > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    weights = [alphas[i] / sum(alphas[j] for j in valid) for i in valid]
    points = [units[i] for i in valid]
    mean = sum(w * u for w, u in zip(weights, points))
    length = torch.linalg.vector_norm(mean)
    mean = points[0].clone() if float(length) < tol else mean / length
    for _ in range(params["max_iter"]):
        tangent = torch.zeros_like(mean)
        for w, u in zip(weights, points):
            dot = torch.clamp(torch.dot(mean.reshape(-1), u.reshape(-1)), -1.0, 1.0)
            theta = torch.arccos(dot)
            if float(theta) < tol:
                continue
            tangent += w * (theta / torch.sin(theta)) * (u - dot * mean)
        step = torch.linalg.vector_norm(tangent)
        if float(step) < tol:
            break
        mean = torch.cos(step) * mean + torch.sin(step) * (tangent / step)
        length = torch.linalg.vector_norm(mean)
        if float(length) > tol:
            mean = mean / length
    return sum(a * m for a, m in zip(alphas, norms)) * mean
