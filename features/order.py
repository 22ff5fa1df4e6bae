"""How each feature behaves when the pair (A, B) is read as (B, A): the one place that knows.

Most features are symmetric. `FLIPS` change sign, `SWAPS` exchange values, and the KL
quantiles (`ASYMMETRIC`) need KL(B‖A), which the caller computes from the same outputs.
"""
from __future__ import annotations

FLIPS = ("delta_norm_logratio", "entropy_gap")
SWAPS = (("kl_base_a", "kl_base_b"),)
ASYMMETRIC = ("kl_mean", "kl_median", "kl_p90")


def reverse(features: dict[str, float], asymmetric: dict[str, float] | None = None) -> dict[str, float]:
    """The (B, A) vector from the (A, B) one, with `asymmetric` giving the KL(B‖A) values."""
    out = dict(features)
    for name in FLIPS:
        if name in out:
            out[name] = -out[name]
    for x, y in SWAPS:
        if x in out and y in out:
            out[x], out[y] = out[y], out[x]
    missing = [k for k in ASYMMETRIC if k in out and (asymmetric is None or k not in asymmetric)]
    if missing:
        raise ValueError(f"reversing needs the reverse-direction values of {missing}")
    if asymmetric:
        out.update({k: asymmetric[k] for k in ASYMMETRIC if k in out})
    return out
