"""Functional features for every pair of N fine-tunes, with one model load per model.

Each model (and the base) is run once on the probes; what the pairwise comparisons need is kept
in the probe-output cache (`features.probe_outputs`, kind "functional"): the next-token
log-probabilities at every real position (float32, exactly what `features.functional` compares)
and the hidden states of layers 1..L at those positions. A second call with the same checkpoints
and probes loads nothing: it reads the cache. The pairwise numbers are then computed from those
arrays with the same functions, on the same positions in the same order (the same batches, so
the models see exactly the same inputs) as `functional_features`: the values are equal to it,
not approximations of it.

Size of one entry: positions × (vocab + layers × hidden) float32 — for 40 probes of up to 128
tokens and a 32k vocabulary about 650 MB, for the tiny zoo (vocab 64) well under 1 MB.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from features.errors import FeatureError
from features.functional import (BATCH_SIZE, MAX_TOKENS, entropy_rows, js_rows, kl_rows, linear_cka, load_tokenizer,
                                 make_batches, probe_hash, resolve_probes, row_cos, squash, tokenize)

OUTPUTS_KIND = "functional"
# Bump when what an entry holds changes meaning (not for new feature formulas on top of it).
OUTPUTS_VERSION = 1


@dataclass(frozen=True)
class ProbeInputs:
    """The probes as the models will see them: padded batches, and digests that key the cache."""

    batches: list
    probe_hash: str
    digest: str  # of the token ids, batch layout and cut: another tokenizer misses


def prepare_inputs(probes: list[str] | None, tokenizer_folders: list, *, max_tokens: int = MAX_TOKENS,
                   batch_size: int = BATCH_SIZE) -> ProbeInputs:
    texts = resolve_probes(probes)
    tok = load_tokenizer(tokenizer_folders)
    ids = tokenize(tok, texts, max_tokens)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = make_batches(ids, batch_size, pad_id)
    digest = hashlib.sha256(json.dumps({"ids": ids, "batch_size": batch_size, "pad": pad_id,
                                        "max_tokens": max_tokens}).encode()).hexdigest()[:32]
    return ProbeInputs(batches, probe_hash(probes), digest)


@dataclass
class ModelOutputs:
    logp: object    # positions × vocab, float32
    hidden: object  # layers × positions × hidden, float32


def model_outputs(folder: str, inputs: ProbeInputs, device, cache, *, fingerprint: str | None = None,
                  on_batch: Callable[[], None] | None = None) -> tuple[ModelOutputs, bool]:
    """One model's outputs on the probes, from the cache or by running it once (and caching).
    Returns (outputs, whether the model was loaded)."""
    import torch

    from features.functional import _load_model, _release, _run
    from features.probe_outputs import ProbeOutputKey
    from merging.checkpoint import Checkpoint
    from merging.errors import MergeError

    if fingerprint is None:
        try:
            with Checkpoint(folder) as ck:
                fingerprint = ck.fingerprint()
        except MergeError as e:
            raise FeatureError(str(e)) from None
    key = ProbeOutputKey(fingerprint, inputs.probe_hash, OUTPUTS_KIND, OUTPUTS_VERSION, inputs.digest)
    entry = cache.load(key)
    if entry is not None:
        arrays, _ = entry
        return ModelOutputs(torch.from_numpy(arrays["logp"]), torch.from_numpy(arrays["hidden"])), False

    model = _load_model(folder, device)
    logps, hiddens = [], []
    for logp, hidden in _run(model, inputs.batches, device, None):
        logps.append(logp)
        hiddens.append(torch.stack(hidden))
        if on_batch is not None:
            on_batch()
    del model
    _release(device)
    out = ModelOutputs(torch.cat(logps), torch.cat(hiddens, dim=1))
    cache.store(key, {"logp": out.logp.numpy(), "hidden": out.hidden.numpy()},
                {"folder": str(folder), "positions": int(out.logp.shape[0]), "vocab": int(out.logp.shape[1]),
                 "layers": int(out.hidden.shape[0]), "hidden_size": int(out.hidden.shape[2]), "exact": True})
    return out, True


def _kl_summary(rows) -> dict[str, float]:
    import torch

    return {
        "kl_mean": squash(float(rows.mean())),
        "kl_median": squash(float(torch.quantile(rows, 0.5))),
        "kl_p90": squash(float(torch.quantile(rows, 0.9))),
    }


def pair_from_outputs(a: ModelOutputs, b: ModelOutputs, *, kl_base_a: float, kl_base_b: float,
                      entropy_a: float, entropy_b: float) -> tuple[dict[str, float], dict[str, float]]:
    """Functional features of (A, B) and of (B, A) from the two models' cached outputs and the
    per-model numbers (mean KL to the base, mean entropy) computed once per model."""
    from features.functional import FUNCTIONAL_FEATURES
    from features.order import reverse

    for what, x, y in (("vocabulary", a.logp.shape, b.logp.shape), ("layers × positions × hidden size", a.hidden.shape, b.hidden.shape)):
        if x != y:
            raise FeatureError(f"models differ in {what}: {list(x)} vs {list(y)}; "
                               f"functional features need the same tokenizer and architecture")
    per_layer = [float(row_cos(ha, hb).mean()) for ha, hb in zip(a.hidden, b.hidden)]
    ab = {
        **_kl_summary(kl_rows(a.logp, b.logp)),
        "js_mean": min(1.0, float(js_rows(a.logp, b.logp).mean()) / math.log(2.0)),
        "top1_agreement": float((a.logp.argmax(dim=-1) == b.logp.argmax(dim=-1)).double().mean()),
        "entropy_gap": math.tanh(entropy_a - entropy_b),
        "hidden_cos_mean": sum(per_layer) / len(per_layer),
        "hidden_cos_min": min(per_layer),
        "hidden_cos_last": per_layer[-1],
        "cka_last": linear_cka(a.hidden[-1], b.hidden[-1]),
        "kl_base_a": kl_base_a,
        "kl_base_b": kl_base_b,
    }
    ab = {name: ab[name] for name in FUNCTIONAL_FEATURES}
    return ab, reverse(ab, _kl_summary(kl_rows(b.logp, a.logp)))


@dataclass
class FunctionalCatalog:
    pairs: dict  # (a, b) -> {feature: value}
    model_loads: int


def functional_all_pairs(base: str, models: dict[str, str], probes: list[str] | None = None, *,
                         device: str = "auto", tokenizer: str | None = None, cache=None,
                         fingerprints: dict[str, str] | None = None, max_tokens: int = MAX_TOKENS,
                         batch_size: int = BATCH_SIZE, progress: bool = False) -> FunctionalCatalog:
    """Functional features of every ordered pair of `models` ({name: folder}) over `base`.

    Loads each model (and the base) at most once, none when their outputs are cached.
    `cache`: a `ProbeOutputCache` (default: the one under $SIMMERGE_HOME). `fingerprints`:
    {folder: fingerprint} already known to the caller."""
    from pathlib import Path

    from features.probe_outputs import ProbeOutputCache
    from merging.device import resolve_device
    from merging.errors import MergeError

    if len(models) < 2:
        raise FeatureError(f"all-pairs features need at least two models, got {len(models)}")
    try:
        dev = resolve_device(device)
    except MergeError as e:
        raise FeatureError(str(e)) from None
    for folder in (base, *models.values()):
        if not Path(folder).is_dir():
            raise FeatureError(f"{folder}: no such folder")
    cache = cache if cache is not None else ProbeOutputCache()
    inputs = prepare_inputs(probes, [tokenizer] if tokenizer else [base, *models.values()],
                            max_tokens=max_tokens, batch_size=batch_size)
    known = fingerprints or {}

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=(len(models) + 1) * len(inputs.batches), desc="functional features (model runs)",
                   unit="batch", leave=False)
    loads = 0
    try:
        def outputs(folder: str) -> ModelOutputs:
            nonlocal loads
            out, loaded = model_outputs(folder, inputs, dev, cache, fingerprint=known.get(str(folder)),
                                        on_batch=bar.update if bar is not None else None)
            loads += int(loaded)
            if not loaded and bar is not None:
                bar.update(len(inputs.batches))
            return out

        base_out = outputs(base)
        per_model, kl_base, entropy = {}, {}, {}
        for name, folder in models.items():
            out = outputs(folder)
            if out.logp.shape != base_out.logp.shape:
                raise FeatureError(f"models differ in vocabulary ({name!r} vs the base): {list(out.logp.shape)} vs "
                                   f"{list(base_out.logp.shape)}; functional features need the same tokenizer and architecture")
            per_model[name] = out
            kl_base[name] = squash(float(kl_rows(out.logp, base_out.logp).mean()))
            entropy[name] = float(entropy_rows(out.logp).mean())
    finally:
        if bar is not None:
            bar.close()
    names = list(models)
    pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ab, ba = pair_from_outputs(per_model[a], per_model[b], kl_base_a=kl_base[a], kl_base_b=kl_base[b],
                                       entropy_a=entropy[a], entropy_b=entropy[b])
            pairs[(a, b)], pairs[(b, a)] = ab, ba
    return FunctionalCatalog(pairs, loads)
