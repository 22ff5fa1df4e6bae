"""Tiny Hugging Face checkpoints made on the spot, for tests of every part of simmerge.

    from tests.tiny_models import make_llama, perturb
    base = make_llama(tmp_path / "base", seed=0)
    ft = perturb(base, tmp_path / "ft", seed=1, scale=0.02)

`make_llama` builds a real (random) LlamaForCausalLM with transformers and saves it;
`perturb` makes a "fine-tune" of any checkpoint folder by adding seeded noise to its
tensors, keeping its file layout (shards, index, tied embeddings) and side files.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

TOKENIZER_CONFIG = {"model_max_length": 128, "tokenizer_class": "PreTrainedTokenizerFast"}


def make_llama(path: str | os.PathLike, seed: int = 0, *, hidden: int = 32, layers: int = 2,
               vocab: int = 64, tie: bool = False, dtype: torch.dtype = torch.float32,
               shard_size: str | int | None = None, intermediate: int | None = None,
               heads: int = 4, kv_heads: int = 2) -> Path:
    """Save a randomly initialised Llama causal LM to `path` and return the path.

    shard_size (e.g. "20KB") makes transformers write sharded safetensors with an index.
    A generation_config.json and a small tokenizer_config.json are written too, so code
    that copies side files has something to copy."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=128, tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    # Random init leaves norms at exactly 1 in every model; give them variety like training would.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    kwargs = {"max_shard_size": shard_size} if shard_size is not None else {}
    model.save_pretrained(path, **kwargs)
    (path / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    return path


def _weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def perturb(base: str | os.PathLike, path: str | os.PathLike, seed: int, *, scale: float = 0.02,
            only: Callable[[str], bool] | None = None) -> Path:
    """Copy checkpoint `base` to `path`, adding N(0, scale^2) noise (seeded) to every float
    tensor for which `only(name)` is true (all by default). The file layout is kept."""
    base, path = Path(base), Path(path)
    path.mkdir(parents=True, exist_ok=False)
    gen = torch.Generator().manual_seed(seed)
    for item in base.iterdir():
        if item.suffix != ".safetensors" and item.is_file():
            shutil.copyfile(item, path / item.name)
    for file in _weight_files(base):
        tensors = load_file(str(file))
        out = {}
        for name in sorted(tensors):
            t = tensors[name]
            if t.is_floating_point() and (only is None or only(name)):
                noise = torch.randn(t.shape, generator=gen, dtype=torch.float32) * scale
                t = (t.float() + noise).to(t.dtype)
            out[name] = t.contiguous()
        save_file(out, str(path / file.name), metadata={"format": "pt"})
    return path


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder (all shards), by name."""
    out: dict[str, torch.Tensor] = {}
    for file in _weight_files(Path(path)):
        out.update(load_file(str(file)))
    return out


def add_word_tokenizer(path: str | os.PathLike, words: list[str], added: tuple[str, ...] = (),
                       **special: str) -> Path:
    """Give a checkpoint folder a word-level tokenizer: words[i] is token i, then each of
    `added` is an added special token (ids after the words); special: bos_token="<s>", ...
    (words of the list). Replaces tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token=words[0], model_max_length=128, **special)
    if added:
        tokenizer.add_tokens(list(added), special_tokens=True)
    tokenizer.save_pretrained(path)
    return path
