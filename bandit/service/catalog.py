"""The catalog: registered checkpoints (their bases and fingerprints), arms and tasks.

Registration reads only safetensors headers (no torch): it checks that a fine-tune has
the same tensors and shapes as its base, and records a fingerprint so that a changed
checkpoint invalidates the features cached for it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bandit.errors import BanditError, NotFound

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+/-]*$")


def add_model(store, name: str, path: str, base: str | None = None, probes: list[str] | None = None) -> dict[str, Any]:
    """Register (or re-register) a checkpoint folder under NAME, optionally as a fine-tune of BASE,
    with its own unlabeled probe texts (for trial merges) when given."""
    from merging.architecture import check_same_architecture
    from merging.checkpoint import Checkpoint

    if not _NAME.match(name or ""):
        raise BanditError(f"bad model name {name!r}: use letters, digits and _ . : + - / (no spaces)")
    folder = Path(path).expanduser().resolve()
    ckpt = Checkpoint(folder)
    if base is not None:
        if base == name:
            raise BanditError(f"model {name!r} cannot be its own base")
        base_row = store.model(base)
        if base_row is None:
            raise NotFound(f"unknown base model {base!r}: register it first with `bandit models add {base} PATH`")
        check_same_architecture(Checkpoint(base_row["path"]), [ckpt])
    summary = {
        "model_type": ckpt.config.get("model_type"),
        "architectures": ckpt.config.get("architectures"),
        "tensors": len(ckpt.tensors),
        "bytes": ckpt.total_bytes,
    }
    if probes is not None:
        from features.trial import texts_hash

        probes = [p.strip() for p in probes if p and p.strip()]
        if not probes:
            raise BanditError(f"model {name!r}: the probe file has no text (one probe per line)")
    with store.transaction():
        store.upsert_model(name, str(folder), base, ckpt.fingerprint(), summary)
        if probes is not None:
            store.set_model_probes(name, probes, texts_hash(probes))
    out = {"name": name, "path": str(folder), "base": base, "fingerprint": ckpt.fingerprint(), **summary}
    if probes is not None:
        out["probes"] = len(probes)
    return out


def model_row(store, name: str) -> dict[str, Any]:
    row = store.model(name)
    if row is None:
        raise NotFound(f"unknown model {name!r}: register it with `bandit models add {name} PATH`")
    return row


# -- arms ----------------------------------------------------------------------------------
def ensure_defaults(store) -> None:
    """A new database gets the default policy and arms, once (whichever process is first)."""
    import time

    from bandit.arms import DEFAULT_ARMS
    from bandit.policies.registry import DEFAULT_POLICY

    if store.get_setting("initialized"):
        return
    with store.transaction():
        if store.get_setting("initialized"):
            return
        if store.get_setting("policy") is None:
            store.set_setting("policy", DEFAULT_POLICY)
        lam = current_lambda(store)
        base_time = time.time()
        for i, (name, operator, params) in enumerate(DEFAULT_ARMS):
            if store.arm(name) is None:
                # distinct times keep the listing in the documented order
                store.insert_arm(name, operator, params, created_at=base_time + i * 1e-6)
                put_prior(store, name, lam)
        store.set_setting("initialized", True)


def current_lambda(store) -> float:
    from bandit.policies.registry import DEFAULT_POLICY

    return (store.get_setting("policy") or DEFAULT_POLICY)["params"].get("lambda", 1.0)


def put_prior(store, arm: str, lam: float) -> None:
    from bandit.policies import ridge
    from bandit.service.reward import RIDGE, arm_prior

    schema, A, b = arm_prior(store, arm, lam)
    store.put_posterior(RIDGE, arm, schema, lam, ridge.dump(A), ridge.dump(b), 0, 0)


def list_arms(store) -> list[dict[str, Any]]:
    return [{"name": r["name"], "operator": r["operator"], "params": r["params"], "status": r["status"],
             "warm_start_from": r["warm_start_from"]} for r in store.arms()]


def add_arm(store, name: str, operator: str, params: dict[str, Any], warm_start_from: str | None,
            shrink: float) -> None:
    """A new arm, proposable at once: from the prior, or a shrunk copy of a donor arm
    (A = λI + s·(A_d − λI), b = s·b_d) so it starts informed but not over-confident."""
    import math

    from bandit.arms import check_arm_name, validate_operator
    from bandit.errors import Conflict, InvalidInput, NotFound
    from bandit.policies import ridge
    from bandit.service.reward import RIDGE

    check_arm_name(name)
    validate_operator(operator, params)
    if isinstance(shrink, bool) or not isinstance(shrink, (int, float)) or math.isnan(shrink) or not 0 <= shrink <= 1:
        raise InvalidInput(f"--shrink must be in [0, 1], got {shrink}")
    lam = current_lambda(store)
    with store.transaction():
        if store.arm(name) is not None:
            raise Conflict(f"arm {name!r} exists already")
        prior = None
        if warm_start_from is not None:
            donor = store.posterior(RIDGE, warm_start_from)
            if store.arm(warm_start_from) is None or donor is None:
                raise NotFound(f"cannot warm-start from unknown arm {warm_start_from!r}")
            d = len(donor["schema"]) + 1
            A, b = ridge.shrink(ridge.load(donor["A"]), ridge.load(donor["b"]), donor["lam"], d, shrink)
            prior = (donor["schema"], ridge.dump(A), ridge.dump(b))
        store.insert_arm(name, operator, params, warm_start_from=warm_start_from,
                         shrink=shrink if warm_start_from else None, prior=prior)
        put_prior(store, name, lam)
        if warm_start_from is None:
            from bandit.service.prior import give_new_arm

            give_new_arm(store, name, lam)  # a prior loaded by `bandit fit` that knows this arm


def retire_arm(store, name: str) -> None:
    from bandit.errors import NotFound

    with store.transaction():
        arm = store.arm(name)
        if arm is None:
            raise NotFound(f"no arm named {name!r}")
        if arm["status"] != "retired":
            store.set_arm_status(name, "retired")


def shift_lambda(store, lam: float) -> None:
    """Give the stored ridge posteriors (and warm-start priors) a new λ, inside the caller's
    transaction: A + (λ_new − λ_old)·I is exactly what learning the same data under λ_new gives."""
    from bandit.policies import ridge
    from bandit.service.reward import RIDGE

    for row in store.posteriors(RIDGE):
        delta = lam - row["lam"]
        if delta == 0:
            continue
        d = len(row["schema"]) + 1
        A = ridge.shift_lambda(ridge.load(row["A"]), d, delta)
        store.put_posterior(RIDGE, row["arm"], row["schema"], lam, ridge.dump(A), row["b"], row["n"], row["version"] + 1)
        arm = store.arm(row["arm"])
        if arm is not None and arm.get("prior_A") is not None:
            d_prior = len(json.loads(arm["prior_schema"])) + 1
            store.set_arm_prior(row["arm"], ridge.dump(ridge.shift_lambda(ridge.load(arm["prior_A"]), d_prior, delta)))


# -- tasks ---------------------------------------------------------------------------------
def check_task_name(task: str) -> str:
    task = (task or "").strip() if isinstance(task, str) else ""
    if not task:
        raise BanditError("a task needs a name")
    return task


def add_task(store, name: str, probes: list[str] | None) -> tuple[str, bool, int]:
    import hashlib

    name = check_task_name(name)
    probe_hash = None
    if probes is not None:
        probes = [p for p in (s.strip() for s in probes) if p]
        if not probes:
            raise BanditError("the probe file holds no texts (one text per line)")
        probe_hash = hashlib.sha256("\n".join(probes).encode()).hexdigest()[:16]
    with store.transaction():
        new = store.upsert_task(name, probes, probe_hash)
    return name, new, len(probes or [])
