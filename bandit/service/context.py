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
from bandit.errors import BanditError, InvalidInput


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


def catalog_features(
    store, names: list[str], probes: list[str] | None, *, structural_only: bool = False, device: str = "auto",
    progress: bool = False, fingerprints: dict[str, str] | None = None, memory_budget: int | None = None,
) -> dict[tuple[str, str], PairFeatures]:
    """Features of every ordered pair of `names` (registered fine-tunes of one base), from the
    cache or, for the pairs it misses, computed all at once (`features.compute_all_pairs`: one
    read and one forward pass per model, not per pair) and cached. The per-model probe outputs
    are kept in `cache/` next to the database."""
    from features import FEATURE_SET, FEATURE_VERSION, compute_all_pairs, probe_hash
    from features.probe_outputs import ProbeOutputCache
    from merging.checkpoint import Checkpoint

    if len(set(names)) != len(names):
        raise InvalidInput("a model is named twice")
    base = common_base(store, names)
    rows = {n: model_row(store, n) for n in names}
    known = fingerprints if fingerprints is not None else {}
    for path in [base["path"], *(r["path"] for r in rows.values())]:
        if path not in known:
            known[path] = Checkpoint(path).fingerprint()
    fp = {n: known[r["path"]] for n, r in rows.items()}
    fp_base = known[base["path"]]
    p_hash = "" if structural_only else probe_hash(probes)

    def key(a: str, b: str) -> str:
        return cache_key(fp[a], fp[b], fp_base, p_hash, FEATURE_SET, FEATURE_VERSION, structural_only)

    out: dict[tuple[str, str], PairFeatures] = {}
    for a in names:
        for b in names:
            if a != b and (cached := store.cached_features(key(a, b))) is not None:
                out[(a, b)] = PairFeatures(a, b, cached, True)
    # Only the models of the missing pairs are read (all pairs among them come for free).
    missing = sorted({m for a in names for b in names if a != b and (a, b) not in out for m in (a, b)},
                     key=names.index)
    if not missing:
        return out
    cache = ProbeOutputCache(probe_cache_root(store))
    computed = compute_all_pairs(base["path"], {m: rows[m]["path"] for m in missing}, probes,
                                 structural_only=structural_only, device=device, progress=progress,
                                 memory_budget=memory_budget, cache=cache, fingerprints=known)
    common = {"base": base["name"], "fp_base": fp_base, "probe_hash": p_hash, "feature_set": FEATURE_SET,
              "version": FEATURE_VERSION}
    with store.transaction():
        for (a, b), values in computed.items():
            store.put_features(key(a, b), {"model_a": a, "model_b": b, "fp_a": fp[a], "fp_b": fp[b], **common}, values)
            out.setdefault((a, b), PairFeatures(a, b, values, False))
    return {(a, b): out[(a, b)] for a in names for b in names if a != b}


def catalogs(store, models: list[str] | None) -> list[list[str]]:
    """The model lists to pair: `models` as given, else each base's registered fine-tunes
    (bases with fewer than two are skipped)."""
    if models:
        if len(models) < 2:
            raise InvalidInput("all pairs need at least two models (--models A B [C ...])")
        return [list(models)]
    by_base: dict[str, list[str]] = {}
    for row in store.models():
        if row["base"] is not None:
            by_base.setdefault(row["base"], []).append(row["name"])
    found = [names for names in by_base.values() if len(names) >= 2]
    if not found:
        raise InvalidInput("no base has two registered fine-tunes: register them with "
                           "`bandit models add NAME PATH --base BASE`")
    return found


def probe_cache_root(store):
    """The database's probe-output cache: `cache/` next to it (for an in-memory database, the
    one under simmerge's home). The functional features' outputs and the trial merges'
    references and per-action signals all live there."""
    from features.probe_outputs import default_cache_root

    return default_cache_root(None if store.path == ":memory:" else store.path)
