"""Tiny Llama checkpoints for the feature tests: a base and fine-tunes that differ from it by
seeded random deltas, saved as Hugging Face folders with a character-level tokenizer.

A plain module (no fixtures) so that benchmarks and other tests can import it too.
"""
from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 .,!?'-:;") + list("ABCDEFGHIJKLMNO")
VOCAB = SPECIALS + CHARS  # 64 entries, the model's vocab_size


def char_tokenizer():
    """A WordLevel tokenizer over single characters: fits vocab 64 and needs no download."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    assert len(VOCAB) == 64
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


def tiny_config(layers: int = 2, hidden: int = 32, vocab: int = 64):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=256, tie_word_embeddings=False,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3,
                       # Wider than the usual 0.02, so that an untrained model's next-token
                       # distributions are peaked and fine-tunes visibly move them.
                       initializer_range=0.2)


def save_state(state: dict, config, path: str | Path, *, tokenizer: bool = True) -> Path:
    """Write `state` as a checkpoint folder through the model class, as real checkpoints are."""
    import torch
    from transformers import LlamaForCausalLM

    path = Path(path)
    model = LlamaForCausalLM(config)
    model.load_state_dict(state)
    model.to(dtype=next(iter(state.values())).dtype)
    with torch.no_grad():
        model.save_pretrained(path)
    if tokenizer:
        char_tokenizer().save_pretrained(path)
    return path


def make_base(path: str | Path, *, seed: int = 0, tokenizer: bool = True, **config_kwargs) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(**config_kwargs)
    model = LlamaForCausalLM(config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # Norm weights start at exactly 1; give them spread so that their deltas are not special.
    for k, v in state.items():
        if v.ndim == 1:
            state[k] = v + 0.1 * torch.randn_like(v)
    return save_state(state, config, path, tokenizer=tokenizer)


def load_state(path: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def make_finetune(base: str | Path, path: str | Path, *, seed: int, scale: float = 0.02,
                  sparsity: float = 0.0, share: float = 0.0, tokenizer: bool = True) -> Path:
    """A fine-tune: base + a seeded random delta of relative size `scale`.

    `sparsity` zeroes that share of the delta's entries (DARE-like fine-tunes), `share`
    mixes in a direction common to every fine-tune made with share > 0, so that pairs can
    be made more or less kin.
    """
    import torch
    from transformers import AutoConfig

    state = load_state(base)
    config = AutoConfig.from_pretrained(str(base))
    gen = torch.Generator().manual_seed(seed)
    common = torch.Generator().manual_seed(10_000)
    out = {}
    for k, v in sorted(state.items()):
        own = torch.randn(v.shape, generator=gen)
        shared = torch.randn(v.shape, generator=common)
        delta = (1 - share) * own + share * shared
        if sparsity:
            delta = delta * (torch.rand(v.shape, generator=gen) >= sparsity)
        out[k] = (v.float() + scale * v.float().std().clamp_min(1e-3) * delta).to(v.dtype)
    return save_state(out, config, path, tokenizer=tokenizer)
