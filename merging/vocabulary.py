"""Merging models whose vocabularies differ: the output tokenizer and the embedding rows.

With mergekit's meaning (0.1.5):
- The output tokenizer is the base model's (`base`; the base is base_model, else the
  first model named), another model's (`model:PATH` or a bare path), or their `union`:
  the base's tokenizer with every token of the other models it lacks added, ordinary
  tokens first, then the others' added (special) tokens. Tokens a model lists at ids at or
  past its config's vocab_size are not its tokens. mergekit's union takes new tokens in
  the hash order of `get_vocab()`, so their ids change from run to run there; here they
  come in model order, then id order, so the same recipe gives the same ids every time.
- Every tensor whose first dimension is the vocabulary (embeddings, lm_head) is re-ordered
  per input to the output vocabulary before the merge method sees it. A token an input
  lacks gets a stand-in row: the one input's row when only one has it; zeros when none;
  the base's row when the base is an input of this tensor and has it; otherwise the mean
  of the rows of the inputs that have it. Rows for a token named in the recipe's
  `tokenizer.tokens` come from its `source` (a model's row of that token, a model's row of
  another token or id, or zeros), for every input when `force: true`, else only for the
  inputs that lack it. `pad_to_multiple_of` rounds the row count up, the padding rows of
  each input being the mean of its real rows.
- The arithmetic of the stand-in rows runs in the inputs' dtype (after the recipe's
  `dtype` cast), as mergekit does, before the merge method's own compute dtype.

No torch or transformers at import: the recipe layer reads the tokenizer section here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from merging.errors import MergeError

# Files that make a folder's tokenizer loadable (a tokenizer_config.json alone does not).
TOKENIZER_DATA_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
TOKEN_SOURCE_KINDS = ("model_token", "zero")


# -- the recipe's tokenizer section (plain data) ---------------------------------------

@dataclass(frozen=True)
class TokenSource:
    """Where one token's row comes from: kind 'model' (that model's row of this token),
    'model_token' (that model's row of `token` or of id `token_id`) or 'zero'."""

    kind: str
    model: str | None = None
    token: str | None = None
    token_id: int | None = None

    def to_layout(self) -> Any:
        if self.kind == "model":
            return self.model
        if self.kind == "zero":
            return {"kind": "zero"}
        out: dict[str, Any] = {"kind": "model_token", "model": self.model}
        if self.token is not None:
            out["token"] = self.token
        else:
            out["token_id"] = self.token_id
        return out


@dataclass(frozen=True)
class TokenSetting:
    source: TokenSource | None = None
    force: bool = False

    def to_layout(self) -> dict:
        out: dict[str, Any] = {}
        if self.source is not None:
            out["source"] = self.source.to_layout()
        if self.force:
            out["force"] = True
        return out


@dataclass(frozen=True)
class TokenizerSettings:
    """mergekit's `tokenizer:` section: source (union, base or a model path), tokens with
    their own sources (each also added to the output tokenizer), pad_to_multiple_of."""

    source: str = "union"
    tokens: Mapping[str, TokenSetting] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None

    @classmethod
    def from_layout(cls, data: Any) -> "TokenizerSettings":
        where = "recipe: tokenizer"
        if not isinstance(data, Mapping):
            raise MergeError(f"{where} must be a mapping (source, tokens, pad_to_multiple_of)")
        unknown = sorted(str(k) for k in set(data) - {"source", "tokens", "pad_to_multiple_of"})
        if unknown:
            raise MergeError(f"{where}: unknown key {unknown[0]!r}")
        source = data.get("source", "union")
        if not isinstance(source, str) or not source:
            raise MergeError(f"{where}.source must be union, base or a model path")
        pad = data.get("pad_to_multiple_of")
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 1):
            raise MergeError(f"{where}.pad_to_multiple_of must be a whole number >= 1, got {pad!r}")
        tokens_in = data.get("tokens") or {}
        if not isinstance(tokens_in, Mapping):
            raise MergeError(f"{where}.tokens must map tokens to {{source, force}}")
        tokens = {}
        for token, setting in tokens_in.items():
            tokens[str(token)] = _token_setting(setting, f"{where}.tokens[{str(token)!r}]")
        return cls(source, tokens, pad)

    def to_layout(self) -> dict:
        out: dict[str, Any] = {"source": self.source}
        if self.tokens:
            out["tokens"] = {t: s.to_layout() for t, s in self.tokens.items()}
        if self.pad_to_multiple_of is not None:
            out["pad_to_multiple_of"] = self.pad_to_multiple_of
        return out

    def with_paths(self, fix) -> "TokenizerSettings":
        """The settings with model references passed through fix (multi-document names)."""
        source = self.source if self.source in ("union", "base") else fix(self.source)
        tokens = {}
        for t, s in self.tokens.items():
            src = s.source
            if src is not None and src.model is not None:
                src = TokenSource(src.kind, fix(src.model), src.token, src.token_id)
            tokens[t] = TokenSetting(src, s.force)
        return TokenizerSettings(source, tokens, self.pad_to_multiple_of)

    def model_references(self) -> list[str]:
        refs = [] if self.source in ("union", "base") else [self.source]
        return refs + [s.source.model for s in self.tokens.values() if s.source is not None and s.source.model]


def _token_setting(data: Any, where: str) -> TokenSetting:
    if data is None:
        return TokenSetting()
    if not isinstance(data, Mapping):
        raise MergeError(f"{where} must be a mapping with source and/or force")
    unknown = sorted(str(k) for k in set(data) - {"source", "force"})
    if unknown:
        raise MergeError(f"{where}: unknown key {unknown[0]!r}")
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise MergeError(f"{where}.force must be true or false")
    raw = data.get("source")
    if raw is None:
        source = None
    elif isinstance(raw, str) and raw:
        source = TokenSource("model", model=raw)
    elif isinstance(raw, Mapping):
        kind = raw.get("kind")
        if kind == "zero":
            if set(raw) - {"kind"}:
                raise MergeError(f"{where}.source: kind zero takes no other key")
            source = TokenSource("zero")
        elif kind == "model_token":
            unknown = sorted(str(k) for k in set(raw) - {"kind", "model", "token", "token_id"})
            if unknown:
                raise MergeError(f"{where}.source: unknown key {unknown[0]!r}")
            model, token, token_id = raw.get("model"), raw.get("token"), raw.get("token_id")
            if not isinstance(model, str) or not model:
                raise MergeError(f"{where}.source: model_token needs a model path")
            if (token is None) == (token_id is None):
                raise MergeError(f"{where}.source: give exactly one of token and token_id")
            if token is not None and not isinstance(token, str):
                raise MergeError(f"{where}.source.token must be a string")
            if token_id is not None and (isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0):
                raise MergeError(f"{where}.source.token_id must be a whole number >= 0")
            source = TokenSource("model_token", model, token, token_id)
        else:
            raise MergeError(f"{where}.source: kind must be one of {', '.join(TOKEN_SOURCE_KINDS)} (or give a model path)")
    else:
        raise MergeError(f"{where}.source must be a model path or {{kind: ...}}")
    if force and source is None:
        raise MergeError(f"{where}: force needs a source")
    return TokenSetting(source, force)


# -- the output vocabulary (transformers, at merge time) -------------------------------

@dataclass
class Vocabulary:
    """The output vocabulary and, per input model, where each output token's row is."""

    tokens: dict[str, int]                 # output token -> output id
    rows: int                              # output rows (the vocabulary, padded)
    positions: dict[str, list[int]]        # realpath of an input -> its row per output id (-1: lacks it)
    originals: dict[str, dict[str, int]]   # realpath -> that input's own vocabulary (for model_token sources)
    settings: TokenizerSettings
    tokenizer: Any = None                  # a transformers tokenizer to save, when built here
    copy_from: Path | None = None          # else: copy the tokenizer files of this folder


def has_tokenizer(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_DATA_FILES)


def _load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, use_fast=True)
    except Exception as e:  # transformers raises many kinds; one line names the folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MergeError(f"tokenizer of {folder}: cannot load ({first})") from None


def _own_tokens(tokenizer, vocab_size: int | None) -> dict[str, int]:
    """A tokenizer's tokens that are rows of its model (id below the config's vocab_size)."""
    vocab = tokenizer.get_vocab()
    if vocab_size is None:
        return dict(vocab)
    return {t: i for t, i in vocab.items() if i < vocab_size}


def build_vocabulary(settings: TokenizerSettings, base: str | None, referenced: Sequence[str],
                     vocab_sizes: Mapping[str, int | None]) -> Vocabulary | None:
    """The output tokenizer and every referenced model's row positions, or None when the
    tokenizer's origin has no tokenizer files (then there is nothing to align: the files
    that are there are copied, as before).

    base: the recipe's base_model (None: the first referenced model stands in);
    referenced: every input model path, base first; vocab_sizes: each one's config
    vocab_size (None when its config has none)."""
    if not referenced:
        return None
    keys = [os.path.realpath(p) for p in referenced]
    lead = base if base is not None else referenced[0]
    source = settings.source
    origin = lead if source in ("union", "base") else source
    if not has_tokenizer(origin):
        return None
    if source not in ("union", "base") and not Path(source).is_dir():
        raise MergeError(f"tokenizer source {source!r} is not union, base or a model folder")
    lead_key = os.path.realpath(lead)
    lead_tok = _load_tokenizer(lead)
    lead_size = vocab_sizes.get(lead_key)
    if lead_size is not None and any(i >= lead_size for i in lead_tok.get_vocab().values()):
        extra = sum(1 for i in lead_tok.get_vocab().values() if i >= lead_size)
        raise MergeError(f"tokenizer of {lead} lists {extra} token(s) at ids >= its vocab_size {lead_size}; "
                         "stripping them from the tokenizer is not supported here")
    tokenizers = {lead_key: lead_tok}
    for path, key in zip(referenced, keys):
        if key not in tokenizers:
            # mergekit assumes a model without a tokenizer shares the base's.
            tokenizers[key] = _load_tokenizer(path) if has_tokenizer(path) else lead_tok
    originals = {key: _own_tokens(tok, vocab_sizes.get(key)) for key, tok in tokenizers.items()}

    out_tok = _load_tokenizer(origin)  # a fresh copy: the lead's own stays as it was read
    origin_size = len(out_tok.get_vocab())
    if source == "union":
        _add_union_tokens(out_tok, [tokenizers[k] for k in dict.fromkeys(keys)],
                          [originals[k] for k in dict.fromkeys(keys)])
    existing = out_tok.get_vocab()
    for token in settings.tokens:
        if token not in existing:
            out_tok.add_tokens(token)
    vocab = dict(out_tok.get_vocab())
    # Nothing added: the origin's own files are the output tokenizer.
    copy_from = Path(origin) if len(vocab) == origin_size else None
    if copy_from is not None:
        out_tok = None
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise MergeError("output tokenizer: its token ids are not 0..n-1 without gaps; cannot lay out embedding rows")
    rows = len(vocab)
    pad = settings.pad_to_multiple_of
    if pad and rows % pad:
        rows += pad - rows % pad
    positions = {}
    for key in dict.fromkeys(keys):
        own = originals[key]
        row = [-1] * len(vocab)
        for token, i in vocab.items():
            j = own.get(token)
            if j is not None:
                row[i] = j
        positions[key] = row
    return Vocabulary(vocab, rows, positions, originals, settings, out_tok, copy_from)


def _add_union_tokens(out_tok, tokenizers: Sequence, own_tokens: Sequence[dict[str, int]]) -> None:
    """Add to out_tok (the lead's tokenizer) every token of the others it lacks: ordinary
    tokens first (model order, then id order), then added tokens with the settings of the
    first model that adds them. A token that any model adds is added as such."""
    present = set(out_tok.get_vocab())
    added_anywhere = {info.content for tok in tokenizers for info in tok.added_tokens_decoder.values()}
    plain: dict[str, None] = {}
    added: dict[str, Any] = {}
    for tok, own in zip(tokenizers, own_tokens):
        own_ids = set(own.values())
        for token, _ in sorted(own.items(), key=lambda kv: kv[1]):
            if token not in added_anywhere and token not in present:
                plain.setdefault(token)
        for i in sorted(tok.added_tokens_decoder):
            info = tok.added_tokens_decoder[i]
            if i in own_ids and info.content not in present:
                added.setdefault(info.content, info)
    for token in plain:
        out_tok.add_tokens(token)
    for info in added.values():
        out_tok.add_tokens(info)


# -- the rows (torch, per tensor) ------------------------------------------------------

@dataclass(frozen=True)
class RowOverride:
    """A recipe-named token's stand-in row for one tensor: zeros (member None) or row `row`
    of member `member`; force: every member takes it, not only those that lack the token."""

    token_id: int
    member: int | None
    row: int
    force: bool


def resolve_overrides(vocabulary: Vocabulary, member_keys: Sequence[str], name: str) -> list[RowOverride]:
    """The recipe's token settings for one tensor whose inputs are member_keys (realpaths)."""
    out = []
    for token, setting in vocabulary.settings.tokens.items():
        if setting.source is None:
            continue  # no source: the automatic stand-in, as for any other token
        token_id = vocabulary.tokens[token]
        src = setting.source
        if src.kind == "zero":
            out.append(RowOverride(token_id, None, 0, setting.force))
            continue
        key = os.path.realpath(src.model)
        if key not in member_keys:
            raise MergeError(f"tokenizer.tokens[{token!r}]: source {src.model} is not an input of tensor {name!r}")
        member = list(member_keys).index(key)
        if src.kind == "model":
            row = vocabulary.positions[key][token_id]
            if row < 0:
                raise MergeError(f"tokenizer.tokens[{token!r}]: {src.model} has no token {token!r}")
        elif src.token_id is not None:
            row = src.token_id
        else:
            row = vocabulary.originals[key].get(src.token, -1)
            if row < 0:
                raise MergeError(f"tokenizer.tokens[{token!r}]: {src.model} has no token {src.token!r}")
        out.append(RowOverride(token_id, member, row, setting.force))
    return out


def align_rows(tensors: Sequence, positions: Sequence[Sequence[int]], rows: int, *, base: int | None = None,
               overrides: Sequence[RowOverride] = ()) -> list:
    """Each input's rows re-ordered to the output vocabulary (mergekit's rule, module
    docstring). tensors[m] holds member m's rows (vocabulary first); positions[m][i] is
    the row of output token i in it (-1: lacks it); base: the member that is the merge's
    base, if any. Returns one [rows, ...] tensor per member, in the promoted dtype."""
    import torch

    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    tensors = [t.to(dtype) for t in tensors]
    tail = tuple(tensors[0].shape[1:])
    for t in tensors:
        if tuple(t.shape[1:]) != tail:
            raise MergeError(f"vocabulary rows of different widths: {list(t.shape)} vs {[t.shape[0], *tail]}")
    device = tensors[0].device
    pos = [torch.as_tensor(list(p), dtype=torch.long, device=device) for p in positions]
    for m, (t, p) in enumerate(zip(tensors, pos)):
        if p.numel() and int(p.max()) >= t.shape[0]:
            raise MergeError(f"vocabulary: a token's row {int(p.max())} is past the {t.shape[0]} rows of input {m}")
    n_tokens = pos[0].numel()
    have = torch.stack([p >= 0 for p in pos])          # [members, tokens]
    count = have.sum(0)
    forced = torch.zeros(n_tokens, dtype=torch.bool, device=device)
    named = torch.zeros(n_tokens, dtype=torch.bool, device=device)
    for o in overrides:
        named[o.token_id] = True
        forced[o.token_id] = o.force
    members = len(tensors)
    needs = (count < members) | forced
    ids = needs.nonzero().squeeze(1)
    slot = torch.full((n_tokens,), -1, dtype=torch.long, device=device)
    slot[ids] = torch.arange(ids.numel(), device=device)
    stand_in = torch.zeros((ids.numel(), *tail), dtype=dtype, device=device)
    auto = ~named[ids]
    c = count[ids]
    donor = auto & (c == 1)
    by_base = auto & (c >= 2) & (have[base][ids] if base is not None else torch.zeros_like(auto))
    mean = auto & (c >= 2) & ~by_base
    for m in range(members):
        h = have[m][ids]
        sel = (donor & h).nonzero().squeeze(1)
        stand_in[sel] = tensors[m][pos[m][ids[sel]]]
        sel = (mean & h).nonzero().squeeze(1)
        # Summed in member order from zeros, in the inputs' dtype, as mergekit does.
        stand_in[sel] = stand_in[sel] + tensors[m][pos[m][ids[sel]]]
    if base is not None:
        sel = by_base.nonzero().squeeze(1)
        stand_in[sel] = tensors[base][pos[base][ids[sel]]]
    for k in torch.unique(c[mean]).tolist():
        sel = (mean & (c == k)).nonzero().squeeze(1)
        stand_in[sel] = stand_in[sel] / int(k)
    for o in overrides:
        # A named token every input has, not forced, keeps each input's own row.
        if o.member is not None and bool(needs[o.token_id]):
            source = tensors[o.member]
            if o.row >= source.shape[0]:
                raise MergeError(f"vocabulary: token id {o.row} is past the {source.shape[0]} rows of its source")
            stand_in[int(slot[o.token_id])] = source[o.row]
    out = []
    for m in range(members):
        aligned = torch.zeros((rows, *tail), dtype=dtype, device=device)
        keep = (have[m] & ~forced).nonzero().squeeze(1)
        aligned[keep] = tensors[m][pos[m][keep]]
        fill = (~(have[m] & ~forced) & needs).nonzero().squeeze(1)
        aligned[fill] = stand_in[slot[fill]]
        if rows > n_tokens:
            aligned[n_tokens:] = torch.mean(aligned[:n_tokens], dim=0)
        out.append(aligned)
    return out
