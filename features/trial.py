"""Trial-merge signals: how much of each source expert's behaviour a merge keeps, with no labels.

For a candidate action — ordered pair (A, B) and an arm — the merge is done in memory through
the engine, loaded into the architecture, and teacher-forced on each expert's *reference
outputs*: for every probe text of model M (M = A, B), M's own greedy continuation. Signals
(all bounded; `_a` on A's probes against A's references, `_b` likewise, bare = their mean):

| name | definition | range |
|---|---|---|
| trial_exact_a/_b/ | share of probes whose whole reference continuation (to and including `</s>` when the expert stopped) the merged model predicts at every position (teacher-forced argmax) | [0, 1] |
| trial_top1_a/_b/ | share of reference continuation tokens, pooled over probes, that are the merged model's argmax | [0, 1] |
| trial_kl_a/_b/ | 1 − exp(−x), x = mean over those positions of KL(p_expert ‖ p_merged), on the expert's top-`TOP_K` tokens plus one bucket for the rest (exact when the vocabulary has ≤ `TOP_K` tokens; otherwise a lower bound of the full KL) | [0, 1) |

Teacher-forced exact agreement equals "greedy generation from the merged model reproduces the
expert's continuation": greedy decoding emits the reference iff each step's argmax, given the
reference prefix, is the next reference token.

Reference outputs depend only on the expert and its probes, so they are computed once and kept
in the one probe-output cache (`features.probe_outputs.ProbeOutputCache`, kind
`REFERENCE_KIND`), keyed by the expert's fingerprint, the probe hash and, as the variant, the
token ids fed and max_new_tokens: `reference_outputs`. The per-action trial features are kept
beside it (`ActionCache`, `trial-actions.json` in the same root).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from features.errors import FeatureError

TRIAL_FEATURES: tuple[str, ...] = (
    "trial_exact", "trial_top1", "trial_kl",
    "trial_exact_a", "trial_exact_b", "trial_top1_a", "trial_top1_b", "trial_kl_a", "trial_kl_b",
)
# Part of the definitions: changing one changes the numbers, so it is in every cache key.
TRIAL_VERSION = 1
# The experts' references in the probe-output cache: greedy continuations with the expert's
# top-K log-probabilities along them.
REFERENCE_KIND = "continuations"
REFERENCE_VERSION = 1
DEFAULT_MAX_NEW_TOKENS = 32
MAX_PROMPT_TOKENS = 128
TOP_K = 64
BATCH_SIZE = 64


@dataclass(frozen=True)
class ReferenceOutputs:
    """One expert's greedy continuations of its probes, with its own next-token
    distributions along them (top-K ids and log-probabilities per continuation position)."""

    prompts: list[list[int]]
    continuations: list[list[int]]   # ends with eos when the expert stopped
    top_ids: list[Any]               # per probe: LongTensor (len(continuation), K)
    top_logp: list[Any]              # per probe: float32 tensor (len(continuation), K)

    @property
    def positions(self) -> int:
        return sum(len(c) for c in self.continuations)


# -- cache keys ---------------------------------------------------------------------------
def texts_hash(texts: Sequence[str]) -> str:
    payload = json.dumps({"texts": list(texts), "max_prompt_tokens": MAX_PROMPT_TOKENS}, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def checkpoint_fingerprint(folder: str | os.PathLike) -> str:
    from merging.checkpoint import Checkpoint
    from merging.errors import MergeError

    try:
        ckpt = Checkpoint(folder)
    except MergeError as e:
        raise FeatureError(str(e)) from None
    try:
        return ckpt.fingerprint()
    finally:
        ckpt.close()


# -- models --------------------------------------------------------------------------------
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_causal_lm(folder: str | os.PathLike, device):
    import torch
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    except Exception as e:  # transformers raises many unrelated types here
        raise FeatureError(f"{folder}: cannot load as a causal language model ({type(e).__name__}: {e})") from None
    return model.to(device).eval()


def load_tokenizer(folders: Iterable[str | os.PathLike]):
    from features.functional import load_tokenizer as first_tokenizer

    return first_tokenizer([Path(f) for f in folders])


def tokenize_prompts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    ids = [tokenizer(t, truncation=True, max_length=MAX_PROMPT_TOKENS)["input_ids"] for t in texts]
    if not ids or any(not seq for seq in ids):
        raise FeatureError("a probe text yields no token (or there are no probes)")
    return ids


def _padded(rows: Sequence[Sequence[int]], pad_id: int, device):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device)


def _logits(model, rows, pad_id, device):
    """Right-padded forward pass: logits (rows × width × vocab), float32."""
    ids, mask = _padded(rows, pad_id, device)
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()


def greedy_continuations(model, prompts: list[list[int]], eos_id: int | None, pad_id: int, device,
                         max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[list[int]]:
    """Greedy continuation of each prompt, stopping after eos or `max_new_tokens` tokens;
    full forward passes (no KV cache), batched, the same computation teacher forcing uses."""
    import torch

    out: list[list[int]] = [[] for _ in prompts]
    with torch.no_grad():
        for start in range(0, len(prompts), BATCH_SIZE):
            live = list(range(start, min(start + BATCH_SIZE, len(prompts))))
            for _ in range(max_new_tokens):
                if not live:
                    break
                rows = [prompts[i] + out[i] for i in live]
                logits = _logits(model, rows, pad_id, device)
                last = torch.tensor([len(r) - 1 for r in rows], device=logits.device)
                nxt = logits[torch.arange(len(rows), device=logits.device), last].argmax(-1).tolist()
                still = []
                for i, tok in zip(live, nxt):
                    out[i].append(int(tok))
                    if tok != eos_id:
                        still.append(i)
                live = still
    return out


def _continuation_logp(model, prompts, continuations, pad_id, device):
    """Per probe: log-probabilities (len(continuation) × vocab, CPU float32) of the model's
    next-token distributions at the positions that predict each continuation token."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), BATCH_SIZE):
            idx = range(start, min(start + BATCH_SIZE, len(prompts)))
            rows = [prompts[i] + continuations[i] for i in idx]
            logp = torch.log_softmax(_logits(model, rows, pad_id, device), dim=-1)
            for row, i in enumerate(idx):
                p, c = len(prompts[i]), len(continuations[i])
                # logits at position t predict token t + 1
                out.append(logp[row, p - 1: p - 1 + c].cpu())
    return out


# -- reference outputs (cached) ------------------------------------------------------------
def reference_outputs(folder: str | os.PathLike, probes: Sequence[str], *, device: str = "auto",
                      max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, cache_dir: str | os.PathLike | None = None,
                      tokenizer=None, model=None) -> tuple[ReferenceOutputs, bool]:
    """The expert in `folder`, greedily continuing its probes: (outputs, whether they came from
    the cache). Kept in the probe-output cache rooted at `cache_dir` (None: its default root).
    `tokenizer`: the pair's tokenizer when the caller has it (default: the folder's own)."""
    from features.probe_outputs import ProbeOutputCache

    probes = [p.strip() for p in probes if p and p.strip()]
    if not probes:
        raise FeatureError(f"{folder}: no probe texts for trial merges")
    tok = tokenizer if tokenizer is not None else load_tokenizer([folder])
    prompts = tokenize_prompts(tok, probes)
    cache = ProbeOutputCache(cache_dir)
    key = reference_key(checkpoint_fingerprint(folder), probes, prompts, max_new_tokens)
    cached = _cached_references(cache, key, prompts)
    if cached is not None:
        return cached, True
    dev = _device(device)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    if model is None:
        model = load_causal_lm(folder, dev)
    conts = greedy_continuations(model, prompts, tok.eos_token_id, pad_id, dev, max_new_tokens)
    top_ids, top_logp = [], []
    for logp in _continuation_logp(model, prompts, conts, pad_id, dev):
        k = min(TOP_K, logp.shape[-1])
        vals, ids = logp.topk(k, dim=-1)
        top_ids.append(ids.contiguous())
        top_logp.append(vals.contiguous())
    refs = ReferenceOutputs(prompts, conts, top_ids, top_logp)
    _store_references(cache, key, refs, folder)
    return refs, False


def reference_key(fingerprint: str, probes: Sequence[str], prompts: Sequence[Sequence[int]], max_new_tokens: int):
    """The probe-output cache key of one expert's references: the token ids actually fed are
    in the variant, so another tokenizer (or token cut) misses."""
    from features.probe_outputs import ProbeOutputKey

    fed = hashlib.sha256(json.dumps([list(p) for p in prompts]).encode()).hexdigest()[:32]
    return ProbeOutputKey(fingerprint, texts_hash(probes), REFERENCE_KIND, REFERENCE_VERSION,
                          f"tokens={fed}|max_new_tokens={int(max_new_tokens)}|top_k={TOP_K}")


def _store_references(cache, key, refs: ReferenceOutputs, folder) -> None:
    """Flat arrays: the continuations back to back with their lengths, and their top-K rows
    (one per continuation token) in the same order."""
    import numpy as np
    import torch

    k = refs.top_ids[0].shape[-1] if refs.top_ids else 0
    arrays = {
        "continuation_lengths": np.array([len(c) for c in refs.continuations], dtype=np.int64),
        "continuation_tokens": np.array([t for c in refs.continuations for t in c], dtype=np.int64),
        "top_ids": torch.cat(refs.top_ids).numpy() if refs.top_ids else np.zeros((0, k), dtype=np.int64),
        "top_logp": torch.cat(refs.top_logp).numpy() if refs.top_logp else np.zeros((0, k), dtype=np.float32),
    }
    cache.store(key, arrays, {"folder": str(folder), "probes": len(refs.prompts), "positions": refs.positions})


def _cached_references(cache, key, prompts) -> ReferenceOutputs | None:
    import torch

    entry = cache.load(key)
    if entry is None:
        return None
    arrays, _ = entry
    lengths = arrays["continuation_lengths"].tolist()
    if len(lengths) != len(prompts) or sum(lengths) != len(arrays["continuation_tokens"]) \
            or len(arrays["top_ids"]) != sum(lengths):
        return None  # not what this key should hold: recompute rather than trust it
    tokens = arrays["continuation_tokens"].tolist()
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    conts = [tokens[s:s + n] for s, n in zip(starts, lengths)]
    top_ids = list(torch.from_numpy(arrays["top_ids"]).split(lengths))
    top_logp = list(torch.from_numpy(arrays["top_logp"]).split(lengths))
    return ReferenceOutputs([list(p) for p in prompts], conts, top_ids, top_logp)


def _device(device: str):
    from merging.device import resolve_device
    from merging.errors import MergeError

    try:
        return resolve_device(device)
    except MergeError as e:
        raise FeatureError(str(e)) from None


# -- the signals -----------------------------------------------------------------------------
def coarse_kl(top_ids, top_logp, logq):
    """KL(p‖q) per row over p's top-K tokens plus one bucket for every other token, float64.

    top_ids/top_logp: (n, K) p's largest entries; logq: (n, V) log q. Equals the full KL
    when K = V, and is never larger than it otherwise (merging outcomes loses information)."""
    import torch

    lp = top_logp.double()
    lq = logq.double().gather(-1, top_ids)
    p, q = lp.exp(), lq.exp()
    kl = (p * (lp - lq)).sum(-1)
    p_rest = (1.0 - p.sum(-1)).clamp_min(0.0)
    q_rest = (1.0 - q.sum(-1)).clamp_min(1e-300)
    rest = torch.where(p_rest > 1e-12, p_rest * (torch.log(p_rest.clamp_min(1e-300)) - torch.log(q_rest)),
                       torch.zeros_like(p_rest))
    return (kl + rest).clamp_min(0.0)


def signals_against(model, refs: ReferenceOutputs, pad_id: int, device) -> dict[str, float]:
    """exact / top1 / kl of `model` teacher-forced on one expert's reference outputs."""
    import torch

    logps = _continuation_logp(model, refs.prompts, refs.continuations, pad_id, device)
    exact = hits = positions = 0
    kl_sum = 0.0
    for logq, cont, ids, lp in zip(logps, refs.continuations, refs.top_ids, refs.top_logp):
        if not cont:
            exact += 1
            continue
        target = torch.tensor(cont, dtype=torch.long)
        ok = logq.argmax(-1) == target
        exact += int(bool(ok.all()))
        hits += int(ok.sum())
        positions += len(cont)
        kl_sum += float(coarse_kl(ids, lp, logq).sum())
    n = len(refs.continuations)
    return {
        "exact": exact / n,
        "top1": hits / positions if positions else 1.0,
        "kl": -math.expm1(-(kl_sum / positions)) if positions else 0.0,
    }


def combine(sig_a: Mapping[str, float], sig_b: Mapping[str, float]) -> dict[str, float]:
    """The named features of one action from its signals on A's and on B's probes."""
    out = {}
    for what in ("exact", "top1", "kl"):
        out[f"trial_{what}"] = 0.5 * (sig_a[what] + sig_b[what])
    for what in ("exact", "top1", "kl"):
        out[f"trial_{what}_a"] = sig_a[what]
        out[f"trial_{what}_b"] = sig_b[what]
    return {name: out[name] for name in TRIAL_FEATURES}


# -- trial merges ------------------------------------------------------------------------------
@dataclass
class TrialResult:
    features: dict[str, float]
    merge: Any            # merging.engine.InMemoryMerge, or None when not kept
    merge_seconds: float  # the engine's merge into a state dict
    score_seconds: float  # the probes, teacher-forced on both experts' references
    load_seconds: float = 0.0  # the state dict into the architecture (built once per runner, not counted)


class TrialRunner:
    """Trial merges of one ordered pair (A, B) over `base`: the references of A and B are
    loaded (or computed) once, the architecture is built once, and each arm's merge is loaded
    into it in turn.

        runner = TrialRunner(base, a, b, probes_a, probes_b, device="cpu")
        result = runner.trial("ties", {"density": 0.5})
    """

    def __init__(self, base: str | os.PathLike, a: str | os.PathLike, b: str | os.PathLike,
                 probes_a: Sequence[str], probes_b: Sequence[str], *, device: str = "auto",
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, cache_dir: str | os.PathLike | None = None,
                 seed: int = 0):
        for folder in (base, a, b):
            if not Path(folder).is_dir():
                raise FeatureError(f"{folder}: no such folder")
        self.base, self.a, self.b = str(base), str(a), str(b)
        self.seed = seed
        self.device = _device(device)
        started = time.perf_counter()
        tok = load_tokenizer([base, a, b])
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        # The first of base, A, B with a tokenizer: what the merged model is scored with.
        self.refs_a, hit_a = reference_outputs(a, probes_a, device=device, max_new_tokens=max_new_tokens,
                                               cache_dir=cache_dir, tokenizer=tok)
        self.refs_b, hit_b = reference_outputs(b, probes_b, device=device, max_new_tokens=max_new_tokens,
                                               cache_dir=cache_dir, tokenizer=tok)
        self.reference_cache_hits = int(hit_a) + int(hit_b)
        self.reference_seconds = time.perf_counter() - started
        self._model = None
        self.architecture_seconds = 0.0  # building the model once, on the first trial

    def _architecture(self, config: dict):
        if self._model is None:
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM

            started = time.perf_counter()
            _quiet_transformers()
            cfg = AutoConfig.for_model(**{k: v for k, v in config.items() if k != "transformers_version"})
            torch.manual_seed(0)  # from_config initialises weights that load_state_dict overwrites
            self._model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(self.device).eval()
            self.architecture_seconds = time.perf_counter() - started
        return self._model

    def load(self, state: Mapping[str, Any]):
        """The architecture with `state` loaded (float32, on the device)."""
        import torch

        model = self._model
        expected = model.state_dict()
        state32 = {k: v.to(dtype=torch.float32) if v.is_floating_point() else v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state32, strict=False)
        tied = getattr(model.config, "tie_word_embeddings", False)
        missing = [k for k in missing if not (tied and k == "lm_head.weight")]
        if missing or unexpected:
            what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
            raise FeatureError(f"trial merge does not fit the architecture ({what}; {len(expected)} tensors expected)")
        return model

    def trial(self, operator: str, params: Mapping[str, Any], *, keep: bool = False) -> TrialResult:
        """Merge (A, B) with one arm in memory and score it against both experts' references."""
        from merging.engine import run_merge_to_state_dict
        from merging.errors import MergeError
        from merging.recipe import Recipe

        try:
            recipe = Recipe.from_arm(operator, params, [self.a, self.b], self.base, seed=self.seed)
            merged = run_merge_to_state_dict(recipe, device=str(self.device))
        except MergeError as e:
            raise FeatureError(str(e)) from None
        import torch

        model = self._architecture(merged.config)
        t0 = time.perf_counter()
        self.load(merged.state)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the copies are asynchronous: count them here
        t1 = time.perf_counter()

        with torch.no_grad():
            sig_a = signals_against(model, self.refs_a, self.pad_id, self.device)
            sig_b = signals_against(model, self.refs_b, self.pad_id, self.device)
        return TrialResult(combine(sig_a, sig_b), merged if keep else None, merged.seconds,
                           time.perf_counter() - t1, t1 - t0)


def pair_fingerprints(base: str | os.PathLike, a: str | os.PathLike, b: str | os.PathLike) -> tuple[str, str, str]:
    return checkpoint_fingerprint(base), checkpoint_fingerprint(a), checkpoint_fingerprint(b)


def action_key(fingerprints: tuple[str, str, str], operator: str, params: Mapping[str, Any],
               probes_a: Sequence[str], probes_b: Sequence[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               seed: int = 0) -> str:
    """A cache key for one action's trial features: the checkpoints' fingerprints (base, A,
    B), the arm, the probes and every setting that changes the numbers. The arm counts by what
    its merge does (params with the operator's defaults filled in), so a changed default is a miss."""
    from merging.registry import merge_meaning

    meaning = merge_meaning(operator, dict(params))
    stamp = json.dumps([*fingerprints, operator, meaning, texts_hash(probes_a), texts_hash(probes_b),
                        max_new_tokens, seed, TRIAL_VERSION], sort_keys=True)
    return hashlib.sha256(stamp.encode()).hexdigest()[:32]


ACTION_CACHE = "trial-actions.json"


class ActionCache:
    """Trial features per action on disk (`trial-actions.json` in the probe-output cache's root,
    `cache_dir` or its default), by `action_key`."""

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        from features.probe_outputs import default_cache_root

        self.path = (Path(cache_dir) if cache_dir is not None else default_cache_root()) / ACTION_CACHE
        try:
            self.entries: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            self.entries = {}  # a damaged cache is rebuilt, never trusted
        self.fresh = 0

    def get(self, key: str) -> dict[str, float] | None:
        entry = self.entries.get(key)
        return dict(entry["features"]) if entry else None

    def put(self, key: str, features: Mapping[str, float], seconds: float) -> None:
        self.entries[key] = {"features": dict(features), "seconds": seconds}
        self.fresh += 1

    def save(self) -> None:
        if not self.fresh:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
        self.fresh = 0
