"""Contexts for merge requests: similarity features of ordered model pairs, cached.

A cache entry is keyed by the fingerprints of A, B and their base (read from safetensors
headers now, so a changed checkpoint misses), the probe texts' hash, the feature set's
name and version, and whether only structural features were asked for. A hit needs
neither torch nor transformers.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from bandit.service.catalog import model_row
from bandit.errors import BanditError


@dataclass
class PairFeatures:
    model_a: str
    model_b: str
    features: dict[str, float]
    cached: bool


def common_base(store, names: list[str]) -> dict[str, Any]:
    """The registered base every named model was fine-tuned from."""
    rows = [model_row(store, n) for n in names]
    bases = {r["base"] for r in rows}
    if None in bases:
        missing = [r["name"] for r in rows if r["base"] is None]
        raise BanditError(f"model {missing[0]!r} has no base: register it with --base BASE to merge it")
    if len(bases) > 1:
        raise BanditError(f"the models do not share one base ({', '.join(sorted(bases))}); a merge needs a common base")
    return model_row(store, bases.pop())


def cache_key(fp_a: str, fp_b: str, fp_base: str, probe_hash: str, feature_set: str, version: int,
              structural_only: bool) -> str:
    payload = json.dumps([fp_a, fp_b, fp_base, probe_hash, feature_set, version, structural_only])
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def pair_features(
    store, a: str, b: str, probes: list[str] | None, *, structural_only: bool = False,
    device: str = "auto", progress: bool = False, fingerprints: dict[str, str] | None = None,
) -> PairFeatures:
    """Features of the ordered pair (a, b), from the cache or computed and cached. A miss
    computes and caches (b, a) too: the same passes give both orders. `fingerprints`, a
    dict the caller keeps across pairs, spares reading each checkpoint's headers and
    samples once per pair it is in."""
    from features import FEATURE_SET, FEATURE_VERSION, compute_features_both_orders, probe_hash
    from merging.checkpoint import Checkpoint

    if a == b:
        raise BanditError(f"cannot pair model {a!r} with itself")
    base = common_base(store, [a, b])
    ra, rb = model_row(store, a), model_row(store, b)
    known = fingerprints if fingerprints is not None else {}
    for path in (ra["path"], rb["path"], base["path"]):
        if path not in known:
            known[path] = Checkpoint(path).fingerprint()
    fp_a, fp_b, fp_base = known[ra["path"]], known[rb["path"]], known[base["path"]]
    p_hash = "" if structural_only else probe_hash(probes)

    def key(fp_x: str, fp_y: str) -> str:
        return cache_key(fp_x, fp_y, fp_base, p_hash, FEATURE_SET, FEATURE_VERSION, structural_only)

    cached = store.cached_features(key(fp_a, fp_b))
    if cached is not None:
        return PairFeatures(a, b, cached, True)
    ab, ba = compute_features_both_orders(base["path"], ra["path"], rb["path"], probes,
                                          structural_only=structural_only, device=device, progress=progress)
    common = {"base": base["name"], "fp_base": fp_base, "probe_hash": p_hash, "feature_set": FEATURE_SET,
              "version": FEATURE_VERSION}
    with store.transaction():
        store.put_features(key(fp_a, fp_b), {"model_a": a, "model_b": b, "fp_a": fp_a, "fp_b": fp_b, **common}, ab)
        store.put_features(key(fp_b, fp_a), {"model_a": b, "model_b": a, "fp_a": fp_b, "fp_b": fp_a, **common}, ba)
    return PairFeatures(a, b, ab, False)


def task_probes(store, task: str) -> list[str] | None:
    """The task's probe texts, or None for the built-in generic set."""
    row = store.task(task)
    return row["probes"] if row and row["probes"] else None
