"""Policies by name, built from the settings stored in the database.

Settings are `{"name": ..., "params": {...}}`. Every factory checks its parameter names, so a
typo is an error rather than a silently ignored setting. On the command line a policy is
written `NAME[:k=v,...]`, and `fixed:ARM` names the arm of the fixed baseline.
"""
from __future__ import annotations

from typing import Any, Callable

from bandit.errors import BanditError
from bandit.policies.base import Policy

DEFAULT_POLICY = {"name": "pooled", "params": {}}


def _take(params: dict[str, Any], policy: str, allowed: dict[str, Any]) -> dict[str, Any]:
    """`allowed` maps each parameter to its default; unknown names are a user error."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BanditError(
            f"policy {policy!r} has no parameter {', '.join(map(repr, unknown))}; it takes: {', '.join(allowed) or 'none'}"
        )
    return {k: params.get(k, v) for k, v in allowed.items()}


def _num(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise BanditError(f"parameter {name!r} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BanditError(f"parameter {name!r} must be a number, got {value!r}") from None


def _linucb(params: dict[str, Any]) -> Policy:
    from bandit.policies.linucb import LinUCB

    p = _take(params, "linucb", {"alpha": 1.0, "lambda": 1.0, "epsilon": 0.05})
    return LinUCB(alpha=_num(p["alpha"], "alpha"), lam=_num(p["lambda"], "lambda"), epsilon=_num(p["epsilon"], "epsilon"))


def _hybrid(params: dict[str, Any]) -> Policy:
    from bandit.policies.hybrid import HybridLinUCB

    p = _take(params, "hybrid", {"alpha": 1.0, "lambda": 1.0, "arm_lambda": None, "epsilon": 0.05,
                                 "descriptor": "operator+params"})
    return HybridLinUCB(alpha=_num(p["alpha"], "alpha"), lam=_num(p["lambda"], "lambda"),
                        epsilon=_num(p["epsilon"], "epsilon"), descriptor=str(p["descriptor"]),
                        arm_lam=None if p["arm_lambda"] is None else _num(p["arm_lambda"], "arm_lambda"))


def _lints(params: dict[str, Any]) -> Policy:
    from bandit.policies.lints import LinTS

    p = _take(params, "lints", {"v": 0.2, "lambda": 1.0, "epsilon": 0.05, "draws": 1000})
    draws = p["draws"]
    if isinstance(draws, bool) or not isinstance(draws, (int, float)) or draws != int(draws):
        raise BanditError(f"parameter 'draws' must be a whole number, got {draws!r}")
    return LinTS(v=_num(p["v"], "v"), lam=_num(p["lambda"], "lambda"), epsilon=_num(p["epsilon"], "epsilon"),
                 draws=int(draws))


def _egreedy(params: dict[str, Any]) -> Policy:
    from bandit.policies.baselines import EpsilonGreedy

    p = _take(params, "egreedy", {"epsilon": 0.1, "lambda": 1.0})
    return EpsilonGreedy(epsilon=_num(p["epsilon"], "epsilon"), lam=_num(p["lambda"], "lambda"))


def _random(params: dict[str, Any]) -> Policy:
    from bandit.policies.baselines import UniformRandom

    _take(params, "random", {})
    return UniformRandom()


def _fixed(params: dict[str, Any]) -> Policy:
    from bandit.policies.baselines import FixedArm

    p = _take(params, "fixed", {"arm": None, "epsilon": 0.0})
    if not p["arm"]:
        raise BanditError("policy 'fixed' needs an arm: fixed:ARM")
    return FixedArm(arm=str(p["arm"]), epsilon=_num(p["epsilon"], "epsilon"))


def _vw(params: dict[str, Any]) -> Policy:
    from bandit.policies.vw import VWPolicy

    # Only these options: raw VW arguments stored in the database would reach every later
    # propose (`--readable_model FILE` writes files), so there is no pass-through.
    p = _take(params, "vw", {"explore": "squarecb", "gamma_scale": 10.0, "gamma_exponent": 0.5,
                             "epsilon": 0.05, "seed": 0})
    seed = p["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise BanditError(f"parameter 'seed' must be a whole number from 0 to 2^31 - 1, got {seed!r}")
    return VWPolicy(explore=str(p["explore"]), gamma_scale=_num(p["gamma_scale"], "gamma_scale"),
                    gamma_exponent=_num(p["gamma_exponent"], "gamma_exponent"),
                    epsilon=_num(p["epsilon"], "epsilon"), seed=seed)


def _pooled(params: dict[str, Any]) -> Policy:
    from bandit.policies.pooled import DEFAULT_ANCHOR, PooledRidge

    p = _take(params, "pooled", {"alpha": 1.0, "lambda_intercept": 1.0, "lambda_context": 10.0,
                                 "lambda_action": 1.0, "anchor": DEFAULT_ANCHOR, "anchor_prior": 1.0,
                                 "epsilon": 0.05, "epsilon_min": 0.01, "exploration": "ucb"})
    anchor = p["anchor"]
    if anchor is not None and (not isinstance(anchor, str) or not anchor or anchor.lower() == "none"):
        anchor = None
    return PooledRidge(alpha=_num(p["alpha"], "alpha"), lam_intercept=_num(p["lambda_intercept"], "lambda_intercept"),
                       lam_context=_num(p["lambda_context"], "lambda_context"),
                       lam_action=_num(p["lambda_action"], "lambda_action"), anchor=anchor,
                       anchor_prior=_num(p["anchor_prior"], "anchor_prior"), epsilon=_num(p["epsilon"], "epsilon"),
                       exploration=str(p["exploration"]), epsilon_min=_num(p["epsilon_min"], "epsilon_min"))


POLICIES: dict[str, Callable[[dict[str, Any]], Policy]] = {
    "linucb": _linucb, "hybrid": _hybrid, "lints": _lints, "egreedy": _egreedy,
    "random": _random, "fixed": _fixed, "vw": _vw, "pooled": _pooled,
}


def make_policy(name: str, params: dict[str, Any] | None = None) -> Policy:
    factory = POLICIES.get(name)
    if factory is None:
        raise BanditError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return factory(dict(params or {}))


def parse_policy_spec(text: str) -> dict[str, Any]:
    """`linucb:alpha=0.5,epsilon=0.1` → settings; `fixed:ties` → fixed with arm ties.

    Returns `{"name", "params"}` after building the policy once, so a bad spec fails here.
    """
    from bandit.inputs import parse_value

    name, _, rest = text.strip().partition(":")
    name = name.strip()
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            if name != "fixed" or "arm" in params:
                raise BanditError(f"bad policy {text!r}: write it as NAME[:k=v,...] (or fixed:ARM)")
            params["arm"] = item
            continue
        key = key.strip()
        if not key or key in params:
            raise BanditError(f"bad policy {text!r}: empty or repeated parameter {key!r}")
        params[key] = parse_value(value)
    make_policy(name, params)
    return {"name": name, "params": params}


def policy_label(settings: dict[str, Any]) -> str:
    """A short readable name: `linucb`, `fixed:ties`, `lints:v=0.2`."""
    params = dict(settings.get("params") or {})
    if settings["name"] == "fixed" and "arm" in params:
        arm = params.pop("arm")
        rest = ",".join(f"{k}={v}" for k, v in params.items())
        return f"fixed:{arm}" + (f",{rest}" if rest else "")
    rest = ",".join(f"{k}={v}" for k, v in params.items())
    return settings["name"] + (f":{rest}" if rest else "")
