"""Functional features for every pair of N fine-tunes, with one model load per model.

Each model (and the base) is run once on the probes; what the pairwise comparisons need is kept
in the probe-output cache (`features.probe_outputs`, kind "functional"): the next-token
log-probabilities at every real position (float32, exactly what `features.functional` compares)
and the hidden states of layers 1..L at those positions. A second call with the same checkpoints
and probes loads nothing: it reads the cache. The pairwise numbers are then computed from those
arrays with the same functions, on the same positions in the same order (the same batches, so
the models see exactly the same inputs) as `functional_features`: the values are equal to it,
not approximations of it.

Size of one entry: positions × (vocab + layers × hidden) float32 while the vocabulary has at
most `EXACT_VOCAB_MAX` entries (the tiny zoo: 64, well under 1 MB). Larger vocabularies keep
only each position's `TOPK_LOGPROBS` most likely tokens with their exact log-probabilities
(the normaliser is the full vocabulary's), and the features become bounds, stated per feature
and tested against the exact computation:
- top1_agreement, hidden_cos_*, cka_last: exact (argmax is the first of the top k; hidden
  states are kept whole);
- kl_* and kl_base_*: lower bounds. Coarse-graining (data processing): the tokens both top-k
  sets hold keep their probabilities, every other token is merged into one bucket whose mass is
  known for both; KL of the coarse distributions ≤ KL of the true ones, position by position,
  so the mean, median and 90th percentile, and 1 − exp(−x) of them, are ≤ too. No finite upper
  bound exists without one (a token outside q's top k may have any small probability);
- js_mean: the same coarse-grained lower bound; the true value is at most that plus
  ln 2 · (mass of p and q in the merged bucket) / 2 per position (`js_upper` in the bounds);
- entropy_gap: each model's entropy lies in [H_top + r·ln(1/m), H_top + r·ln((V − k)/r)]
  (r the mass outside the top k, m the smallest kept probability); the feature uses the middle
  of each interval, and `compact_bounds` gives the interval of the gap.
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
# Vocabularies up to this size are cached whole (exact features); larger ones as top-k.
EXACT_VOCAB_MAX = 4096
TOPK_LOGPROBS = 256
# All models' outputs are held for the pairwise step up to this; beyond, read back per pair.
DEFAULT_OUTPUTS_BUDGET = 2 * 1024 ** 3


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
    hidden: object           # layers × positions × hidden, float32
    logp: object = None      # positions × vocab, float32 (exact form)
    top_ids: object = None   # positions × k, int64, most likely first (compact form)
    top_logp: object = None  # positions × k, float32, their exact log-probabilities
    vocab: int = 0
    key: object = None       # its probe-output cache entry, to read it again

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.hidden, self.logp, self.top_ids, self.top_logp)
                   if t is not None)

    @property
    def exact(self) -> bool:
        return self.logp is not None

    @property
    def positions(self) -> int:
        return int(self.hidden.shape[1])


def model_outputs(folder: str, inputs: ProbeInputs, device, cache, *, fingerprint: str | None = None,
                  on_batch: Callable[[], None] | None = None, exact_vocab_max: int = EXACT_VOCAB_MAX,
                  topk: int = TOPK_LOGPROBS) -> tuple[ModelOutputs, bool]:
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
    # The form depends on the vocabulary, known only once the model ran: both keys are tried.
    keys = {form: ProbeOutputKey(fingerprint, inputs.probe_hash, OUTPUTS_KIND, OUTPUTS_VERSION,
                                 f"{inputs.digest}|{form}|{exact_vocab_max}")
            for form in ("exact", f"top{topk}")}
    for key in keys.values():
        out = cached_outputs(cache, key)
        if out is not None:
            return out, False

    model = _load_model(folder, device)
    logps, hiddens = [], []
    for logp, hidden in _run(model, inputs.batches, device, None):
        logps.append(logp)
        hiddens.append(torch.stack(hidden))
        if on_batch is not None:
            on_batch()
    del model
    _release(device)
    logp, hidden = torch.cat(logps), torch.cat(hiddens, dim=1)
    vocab = int(logp.shape[1])
    meta = {"folder": str(folder), "positions": int(logp.shape[0]), "vocab": vocab,
            "layers": int(hidden.shape[0]), "hidden_size": int(hidden.shape[2])}
    if vocab <= exact_vocab_max:
        out = ModelOutputs(hidden, logp=logp, vocab=vocab, key=keys["exact"])
        cache.store(keys["exact"], {"logp": logp.numpy(), "hidden": hidden.numpy()}, {**meta, "form": "exact"})
    else:
        top = torch.topk(logp, min(topk, vocab), dim=1)  # sorted, most likely first
        out = ModelOutputs(hidden, top_ids=top.indices, top_logp=top.values.contiguous(), vocab=vocab,
                           key=keys[f"top{topk}"])
        cache.store(keys[f"top{topk}"], {"top_ids": top.indices.to(torch.int32).numpy(),
                                         "top_logp": out.top_logp.numpy(), "hidden": hidden.numpy()},
                    {**meta, "form": f"top{topk}"})
    return out, True


def cached_outputs(cache, key) -> ModelOutputs | None:
    """The outputs stored under `key`, or None."""
    import torch

    entry = cache.load(key)
    if entry is None:
        return None
    arrays, meta = entry
    hidden = torch.from_numpy(arrays["hidden"])
    if "logp" in arrays:
        return ModelOutputs(hidden, logp=torch.from_numpy(arrays["logp"]), vocab=meta["vocab"], key=key)
    return ModelOutputs(hidden, top_ids=torch.from_numpy(arrays["top_ids"]).long(),
                        top_logp=torch.from_numpy(arrays["top_logp"]), vocab=meta["vocab"], key=key)


# -- divergences from the compact (top-k) form ------------------------------------------------
ROWS_PER_STEP = 256  # positions matched at once: rows × k × k booleans


def _matched(a: ModelOutputs, b: ModelOutputs):
    """Per block of positions: A's kept probabilities p, B's log-probability at those tokens
    (where B kept them), the mask of those tokens, B's kept probabilities q. float64."""
    import torch

    for start in range(0, a.positions, ROWS_PER_STEP):
        stop = min(start + ROWS_PER_STEP, a.positions)
        ids_a, ids_b = a.top_ids[start:stop], b.top_ids[start:stop]
        lp_a, lp_b = a.top_logp[start:stop].double(), b.top_logp[start:stop].double()
        match = ids_a[:, :, None] == ids_b[:, None, :]
        in_b = match.any(dim=2)
        lq_at = torch.where(match, lp_b[:, None, :], torch.zeros((), dtype=torch.float64)).sum(dim=2)
        yield lp_a, lq_at, in_b, lp_b


def compact_divergences(a: ModelOutputs, b: ModelOutputs):
    """Per position: (KL(p‖q) lower bound, JS lower bound, JS upper bound), in nats."""
    import torch

    kls, js_lo, js_hi = [], [], []
    for lp_a, lq_at, in_b, _ in _matched(a, b):
        p = lp_a.exp() * in_b
        q = torch.where(in_b, lq_at.exp(), torch.zeros((), dtype=torch.float64))
        rest_p, rest_q = _rest_mass(p), _rest_mass(q)
        known_kl = torch.where(in_b, p * (lp_a - lq_at), torch.zeros((), dtype=torch.float64)).sum(dim=1)
        rest_kl = torch.where(rest_p > 0, rest_p * (rest_p.log() - rest_q.clamp_min(1e-300).log()),
                              torch.zeros((), dtype=torch.float64))
        kls.append((known_kl + rest_kl).clamp_min(0.0))
        known_js = _js_terms(p, q).sum(dim=1)
        rest_js = _js_terms(rest_p, rest_q)
        js_lo.append((known_js + rest_js).clamp(0.0, math.log(2.0)))
        js_hi.append((known_js + (rest_p + rest_q) / 2 * math.log(2.0)).clamp(0.0, math.log(2.0)))
    return torch.cat(kls), torch.cat(js_lo), torch.cat(js_hi)


# float32 log-probabilities of a whole vocabulary sum to 1 only within rounding (~1e-7); a
# merged bucket lighter than this is that rounding, not mass, and would otherwise weigh in
# through log(p_rest / q_rest) of two rounding errors.
MASS_EPS = 1e-6


def _rest_mass(p):
    """The probability outside the kept tokens, 0 when within rounding of 0."""
    import torch

    rest = 1.0 - p.sum(dim=1)
    return torch.where(rest > MASS_EPS, rest, torch.zeros((), dtype=rest.dtype))


def _js_terms(p, q):
    """½[p ln(2p/(p+q)) + q ln(2q/(p+q))] elementwise, 0·ln 0 = 0."""
    import torch

    m = (p + q) / 2
    safe_m = torch.where(m > 0, m, torch.ones_like(m))
    return 0.5 * (torch.xlogy(p, p) - torch.xlogy(p, safe_m) + torch.xlogy(q, q) - torch.xlogy(q, safe_m))


def compact_entropy_bounds(a: ModelOutputs):
    """Per position, the interval holding the entropy (nats) given only the top k."""
    import torch

    lp = a.top_logp.double()
    p = lp.exp()
    kept = -(p * lp).sum(dim=1)
    rest = _rest_mass(p)
    smallest = lp[:, -1]
    others = max(a.vocab - lp.shape[1], 0)
    lo = kept + rest * (-smallest)
    hi = kept + torch.where(rest > 0, rest * (math.log(max(others, 1)) - rest.clamp_min(1e-300).log()),
                            torch.zeros((), dtype=torch.float64))
    return lo, torch.maximum(lo, hi)


def _kl_positions(a: ModelOutputs, b: ModelOutputs):
    return kl_rows(a.logp, b.logp) if a.exact and b.exact else compact_divergences(a, b)[0]


def _mean_entropy(a: ModelOutputs) -> float:
    if a.exact:
        return float(entropy_rows(a.logp).mean())
    lo, hi = compact_entropy_bounds(a)
    return float(((lo + hi) / 2).mean())


def _top1(a: ModelOutputs):
    return a.logp.argmax(dim=-1) if a.exact else a.top_ids[:, 0]


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

    for what, x, y in (("vocabulary", a.vocab, b.vocab), ("layers × positions × hidden size", a.hidden.shape, b.hidden.shape)):
        if x != y:
            raise FeatureError(f"models differ in {what}: {x} vs {y}; "
                               f"functional features need the same tokenizer and architecture")
    per_layer = [float(row_cos(ha, hb).mean()) for ha, hb in zip(a.hidden, b.hidden)]
    exact = a.exact and b.exact
    js = js_rows(a.logp, b.logp) if exact else compact_divergences(a, b)[1]
    ab = {
        **_kl_summary(_kl_positions(a, b)),
        "js_mean": min(1.0, float(js.mean()) / math.log(2.0)),
        "top1_agreement": float((_top1(a) == _top1(b)).double().mean()),
        "entropy_gap": math.tanh(entropy_a - entropy_b),
        "hidden_cos_mean": sum(per_layer) / len(per_layer),
        "hidden_cos_min": min(per_layer),
        "hidden_cos_last": per_layer[-1],
        "cka_last": linear_cka(a.hidden[-1], b.hidden[-1]),
        "kl_base_a": kl_base_a,
        "kl_base_b": kl_base_b,
    }
    ab = {name: ab[name] for name in FUNCTIONAL_FEATURES}
    return ab, reverse(ab, _kl_summary(_kl_positions(b, a)))


@dataclass
class FunctionalCatalog:
    pairs: dict  # (a, b) -> {feature: value}
    model_loads: int


def functional_all_pairs(base: str, models: dict[str, str], probes: list[str] | None = None, *,
                         device: str = "auto", tokenizer: str | None = None, cache=None,
                         fingerprints: dict[str, str] | None = None, max_tokens: int = MAX_TOKENS,
                         batch_size: int = BATCH_SIZE, progress: bool = False,
                         exact_vocab_max: int = EXACT_VOCAB_MAX, topk: int = TOPK_LOGPROBS,
                         memory_budget: int = DEFAULT_OUTPUTS_BUDGET) -> FunctionalCatalog:
    """Functional features of every ordered pair of `models` ({name: folder}) over `base`.

    Loads each model (and the base) at most once, none when their outputs are cached. When all
    models' outputs together exceed `memory_budget` bytes, they are kept on disk (in the cache)
    and read back pair by pair, two at a time, instead of held.
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
                                        on_batch=bar.update if bar is not None else None,
                                        exact_vocab_max=exact_vocab_max, topk=topk)
            loads += int(loaded)
            if not loaded and bar is not None:
                bar.update(len(inputs.batches))
            return out

        base_out = outputs(base)
        per_model, kl_base, entropy = {}, {}, {}
        held, spilled = 0, False
        for name, folder in models.items():
            out = outputs(folder)
            if (out.vocab, out.positions) != (base_out.vocab, base_out.positions):
                raise FeatureError(f"models differ in vocabulary ({name!r} vs the base): {out.vocab} vs "
                                   f"{base_out.vocab}; functional features need the same tokenizer and architecture")
            kl_base[name] = squash(float(_kl_positions(out, base_out).mean()))
            entropy[name] = _mean_entropy(out)
            held += out.nbytes
            if spilled:
                per_model[name] = out.key
            elif held > memory_budget:
                # From here on, outputs are read back from the cache when a pair needs them.
                spilled = True
                per_model = {n: o.key for n, o in per_model.items()}
                per_model[name] = out.key
            else:
                per_model[name] = out
    finally:
        if bar is not None:
            bar.close()
    del base_out

    def get(name: str) -> ModelOutputs:
        value = per_model[name]
        if isinstance(value, ModelOutputs):
            return value
        out = cached_outputs(cache, value)
        if out is None:
            raise FeatureError(f"the probe-output cache lost the entry of {name!r} while in use ({cache.root})")
        return out

    names = list(models)
    pairs = {}
    for i, a in enumerate(names[:-1]):
        out_a = get(a)
        for b in names[i + 1:]:
            ab, ba = pair_from_outputs(out_a, get(b), kl_base_a=kl_base[a], kl_base_b=kl_base[b],
                                       entropy_a=entropy[a], entropy_b=entropy[b])
            pairs[(a, b)], pairs[(b, a)] = ab, ba
    return FunctionalCatalog(pairs, loads)
