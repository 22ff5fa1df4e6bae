"""Functional similarity of two fine-tunes, from their outputs on unlabeled probe texts.

The probes are tokenized once, cut to `MAX_TOKENS`, right-padded into batches (the
attention mask hides the padding, so every real position sees the same context as it
would alone). The three models are loaded one at a time — A, then the base, then B — and
between loads only what the later comparisons need is kept on the CPU: A's and the base's
next-token log-probabilities and A's hidden states at the real (non-pad) positions. Peak
memory is one model with its activations plus those arrays (2 · positions · vocab floats
for the log-probabilities).

The math on those arrays (`kl_rows`, `js_rows`, `entropy_rows`, `row_cos`, `linear_cka`)
is plain functions of tensors, testable against numpy; the definitions of the features are
in `features/__init__.py`.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

from features.errors import FeatureError

FUNCTIONAL_FEATURES: tuple[str, ...] = (
    "kl_mean",
    "kl_median",
    "kl_p90",
    "js_mean",
    "top1_agreement",
    "entropy_gap",
    "hidden_cos_mean",
    "hidden_cos_min",
    "hidden_cos_last",
    "cka_last",
    "kl_base_a",
    "kl_base_b",
)

# Part of the feature definitions (a longer cut changes the numbers): changing it means
# bumping FEATURE_VERSION.
MAX_TOKENS = 128
BATCH_SIZE = 16
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


# -- probes and tokenizer ------------------------------------------------------------------
def generic_probes() -> list[str]:
    """The built-in probe set shipped with the package, one text per line."""
    text = resources.files("features").joinpath("probes_generic.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def resolve_probes(probes: list[str] | None) -> list[str]:
    """The probe texts to use: the caller's (blank ones dropped) or the built-in set."""
    if probes is None:
        return generic_probes()
    texts = [p.strip() for p in probes if p and p.strip()]
    if not texts:
        raise FeatureError("no probe texts: the probe list is empty or blank")
    return texts


def probe_hash(probes: list[str] | None) -> str:
    """A digest of the probe texts as they will be used (None: the built-in set), with the
    token cut, so that equal probe sets share cache entries and different ones never do."""
    import hashlib
    import json

    texts = resolve_probes(probes)
    payload = json.dumps({"texts": texts, "max_tokens": MAX_TOKENS}, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def load_tokenizer(folders: list[str | Path]):
    """The tokenizer of the first folder that has one; FeatureError if none has."""
    from transformers import AutoTokenizer

    for folder in folders:
        folder = Path(folder)
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            try:
                return AutoTokenizer.from_pretrained(str(folder))
            except Exception as e:  # transformers raises many unrelated types here
                raise FeatureError(f"{folder}: cannot load its tokenizer ({type(e).__name__}: {e})") from None
    where = ", ".join(str(f) for f in folders)
    raise FeatureError(f"no tokenizer in {where}: functional features need one "
                       f"(save the tokenizer with the checkpoint, or pass a tokenizer folder)")


def tokenize(tokenizer, texts: list[str], max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    ids = [tokenizer(t, truncation=True, max_length=max_tokens)["input_ids"] for t in texts]
    ids = [seq for seq in ids if seq]
    if not ids:
        raise FeatureError("no probe text yields any token")
    return ids


def make_batches(ids: list[list[int]], batch_size: int, pad_id: int) -> list[tuple]:
    """(input_ids, attention_mask) pairs, right-padded; texts sorted by length so that
    batches waste little on padding. The order is fixed, so every model sees the same."""
    import torch

    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    batches = []
    for start in range(0, len(order), batch_size):
        group = [ids[i] for i in order[start:start + batch_size]]
        width = max(len(s) for s in group)
        input_ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, seq in enumerate(group):
            input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        batches.append((input_ids, mask))
    return batches


# -- math on log-probabilities and hidden states ------------------------------------------
def kl_rows(logp, logq):
    """KL(p‖q) per row, in nats, float64."""
    logp, logq = logp.double(), logq.double()
    return (logp.exp() * (logp - logq)).sum(dim=-1).clamp_min(0.0)


def js_rows(logp, logq):
    """Jensen–Shannon divergence per row, in nats (at most ln 2), float64."""
    import torch

    logp, logq = logp.double(), logq.double()
    logm = torch.logaddexp(logp, logq) - math.log(2.0)
    js = 0.5 * (logp.exp() * (logp - logm)).sum(dim=-1) + 0.5 * (logq.exp() * (logq - logm)).sum(dim=-1)
    return js.clamp(0.0, math.log(2.0))


def entropy_rows(logp):
    """Entropy per row, in nats, float64."""
    logp = logp.double()
    return -(logp.exp() * logp).sum(dim=-1)


def row_cos(x, y):
    """Cosine per row, float64; two zero rows count as identical (1), one as unrelated (0)."""
    import torch

    x, y = x.double(), y.double()
    nx, ny = x.norm(dim=-1), y.norm(dim=-1)
    denom = nx * ny
    cos = (x * y).sum(dim=-1) / torch.where(denom > 0, denom, torch.ones_like(denom))
    cos = torch.where((nx == 0) & (ny == 0), torch.ones_like(cos), cos)
    return cos.clamp(-1.0, 1.0)


def linear_cka(x, y) -> float:
    """Linear CKA (Kornblith et al. 2019) of two (positions × features) matrices, in [0, 1].

    Computed through whichever Gram matrix is smaller (positions² or features²); the two
    forms are equal. Degenerate input (no variance) gives 1 for identical matrices, else 0.
    """
    x, y = x.double(), y.double()
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    if x.shape[0] <= x.shape[1]:
        kx, ky = x @ x.T, y @ y.T
        cross = float((kx * ky).sum())
    else:
        kx, ky = x.T @ x, y.T @ y
        cross = float(((y.T @ x) ** 2).sum())
    nx, ny = float(kx.norm()), float(ky.norm())
    if nx == 0.0 or ny == 0.0:
        return 1.0 if bool((x == y).all()) else 0.0
    return min(1.0, max(0.0, cross / (nx * ny)))


def squash(x: float) -> float:
    """A divergence in nats onto [0, 1): 1 − exp(−x)."""
    return -math.expm1(-max(x, 0.0))


# -- running the models --------------------------------------------------------------------
def _load_model(folder: str, device):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # Stored dtype on an accelerator; float32 on the CPU, where half-precision kernels
    # are slow or missing.
    dtype = "auto" if device.type != "cpu" else torch.float32
    # transformers' own per-load bar would interleave with ours (and print when piped).
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except Exception as e:  # transformers raises many unrelated types here
        raise FeatureError(f"{folder}: cannot load as a causal language model ({type(e).__name__}: {e})") from None
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return model.to(device).eval()


def _run(model, batches, device, bar, *, hidden_states: bool = True):
    """Per batch: log-probabilities and hidden states (layers 1..L; None when not asked
    for) at the real positions, float32 on the CPU."""
    import torch

    with torch.no_grad():
        for input_ids, mask in batches:
            out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                        output_hidden_states=hidden_states)
            keep = mask.to(device).bool()
            logp = torch.log_softmax(out.logits.float(), dim=-1)[keep].cpu()
            # hidden_states[0] is the embedding lookup, a weight fact the structural
            # features already cover; the blocks' outputs start at 1.
            hidden = [h.float()[keep].cpu() for h in out.hidden_states[1:]] if hidden_states else None
            if bar is not None:
                bar.update(1)
            yield logp, hidden


def _release(device) -> None:
    """Give a dropped model's memory back before the next one loads."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def functional_features(base: str, a: str, b: str, probes: list[str] | None = None, *, device: str = "auto",
                        tokenizer: str | None = None, max_tokens: int = MAX_TOKENS, batch_size: int = BATCH_SIZE,
                        progress: bool = False, both_orders: bool = False):
    """Functional features of the ordered pair (A, B) over `base` on the probe texts
    (None: the built-in generic set); see `features` for the list.

    With `both_orders`, returns ((A, B) features, (B, A) features) from the same three
    forward passes: only KL(A‖B) needs its reverse computed; the rest swap or flip."""
    import torch

    from merging.device import resolve_device
    from merging.errors import MergeError

    try:
        dev = resolve_device(device)
    except MergeError as e:
        raise FeatureError(str(e)) from None
    for folder in (base, a, b):
        if not Path(folder).is_dir():
            raise FeatureError(f"{folder}: no such folder")
    texts = resolve_probes(probes)
    tok = load_tokenizer([tokenizer] if tokenizer else [base, a, b])
    ids = tokenize(tok, texts, max_tokens)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = make_batches(ids, batch_size, pad_id)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=3 * len(batches), desc="functional features", unit="batch", leave=False)

    def check(shape_ref, shape, what):
        if shape_ref != shape:
            raise FeatureError(f"models differ in {what}: {list(shape_ref)} vs {list(shape)}; "
                               f"functional features need the same tokenizer and architecture")

    try:
        model = _load_model(a, dev)
        logp_a, hidden_a = [], []
        for logp, hidden in _run(model, batches, dev, bar):
            logp_a.append(logp)
            hidden_a.append(hidden)
        del model
        _release(dev)

        model = _load_model(base, dev)
        logp_base, kl_base_a = [], []
        for i, (logp, _) in enumerate(_run(model, batches, dev, bar, hidden_states=False)):
            check(logp_a[i].shape, logp.shape, "vocabulary (A vs base)")
            logp_base.append(logp)
            kl_base_a.append(kl_rows(logp_a[i], logp))
        del model
        _release(dev)

        model = _load_model(b, dev)
        kl, kl_rev, js, agree, ent_a, ent_b, kl_base_b = [], [], [], [], [], [], []
        layer_cos: list[list] = []
        last_a, last_b = [], []
        for i, (logp, hidden) in enumerate(_run(model, batches, dev, bar)):
            check(logp_a[i].shape, logp.shape, "vocabulary (A vs B)")
            check((len(hidden_a[i]),) + tuple(hidden_a[i][0].shape), (len(hidden),) + tuple(hidden[0].shape),
                  "layers × hidden size (A vs B)")
            kl.append(kl_rows(logp_a[i], logp))
            if both_orders:
                kl_rev.append(kl_rows(logp, logp_a[i]))
            js.append(js_rows(logp_a[i], logp))
            agree.append(logp_a[i].argmax(dim=-1) == logp.argmax(dim=-1))
            ent_a.append(entropy_rows(logp_a[i]))
            ent_b.append(entropy_rows(logp))
            kl_base_b.append(kl_rows(logp, logp_base[i]))
            layer_cos.append([row_cos(ha, hb) for ha, hb in zip(hidden_a[i], hidden)])
            last_a.append(hidden_a[i][-1])
            last_b.append(hidden[-1])
            # What this batch needed from A and the base is used up.
            logp_a[i] = logp_base[i] = hidden_a[i] = None
        del model
        _release(dev)
    finally:
        if bar is not None:
            bar.close()

    def kl_summary(rows) -> dict[str, float]:
        kl_all = torch.cat(rows)
        return {
            "kl_mean": squash(float(kl_all.mean())),
            "kl_median": squash(float(torch.quantile(kl_all, 0.5))),
            "kl_p90": squash(float(torch.quantile(kl_all, 0.9))),
        }

    per_layer = [float(torch.cat([batch[layer] for batch in layer_cos]).mean()) for layer in range(len(layer_cos[0]))]
    ab = {
        **kl_summary(kl),
        "js_mean": min(1.0, float(torch.cat(js).mean()) / math.log(2.0)),
        "top1_agreement": float(torch.cat(agree).double().mean()),
        "entropy_gap": math.tanh(float(torch.cat(ent_a).mean()) - float(torch.cat(ent_b).mean())),
        "hidden_cos_mean": sum(per_layer) / len(per_layer),
        "hidden_cos_min": min(per_layer),
        "hidden_cos_last": per_layer[-1],
        "cka_last": linear_cka(torch.cat(last_a), torch.cat(last_b)),
        "kl_base_a": squash(float(torch.cat(kl_base_a).mean())),
        "kl_base_b": squash(float(torch.cat(kl_base_b).mean())),
    }
    if not both_orders:
        return ab
    from features.order import reverse

    return ab, reverse(ab, kl_summary(kl_rev))
