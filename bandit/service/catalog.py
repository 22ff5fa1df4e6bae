"""The model catalog: registered checkpoints, their bases and fingerprints.

Registration reads only safetensors headers (no torch): it checks that a fine-tune has
the same tensors and shapes as its base, and records a fingerprint so that a changed
checkpoint invalidates the features cached for it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bandit.errors import BanditError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+/-]*$")


def check_compatible(base, model) -> None:
    """Same tensor names and shapes, except an lm_head that a tied config may leave out."""
    from merging.errors import CheckpointError

    b_names, m_names = set(base.tensors), set(model.tensors)
    for name in sorted(b_names ^ m_names):
        if name.startswith("lm_head.") and (base.tie_word_embeddings or model.tie_word_embeddings):
            continue
        side = model.path if name in b_names else base.path
        raise CheckpointError(f"architecture mismatch: tensor {name!r} is missing from {side}")
    for name in sorted(b_names & m_names):
        if base.tensors[name].shape != model.tensors[name].shape:
            raise CheckpointError(
                f"architecture mismatch: tensor {name!r} has shape {list(model.tensors[name].shape)} in "
                f"{model.path} but {list(base.tensors[name].shape)} in {base.path}"
            )


def add_model(store, name: str, path: str, base: str | None = None, probes: list[str] | None = None) -> dict[str, Any]:
    """Register (or re-register) a checkpoint folder under NAME, optionally as a fine-tune of BASE,
    with its own unlabeled probe texts (for trial merges) when given."""
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
            raise BanditError(f"unknown base model {base!r}: register it first with `bandit models add {base} PATH`")
        check_compatible(Checkpoint(base_row["path"]), ckpt)
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
        raise BanditError(f"unknown model {name!r}: register it with `bandit models add {name} PATH`")
    return row
