"""A character-level tokenizer in the standard Hugging Face format.

One token per character, plus one token per task tag (`[add]`, `[?]`, ...) so a tag is a
single learned embedding. Saved as tokenizer.json + tokenizer_config.json, it loads with
`AutoTokenizer.from_pretrained(folder)` like any other model's tokenizer; `tokenizer(text)`
prepends `<s>`, and decoding joins characters without spaces.
"""
from __future__ import annotations

import os
import string

from zoo.tasks import HIDDEN_TAG, TASKS

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]
CHARACTERS = string.digits + string.ascii_lowercase + string.ascii_uppercase + "+-=,:>"
# Enough for every prompt + answer the tasks produce (the longest is ~30 tokens).
MODEL_MAX_LENGTH = 64


def vocabulary() -> dict[str, int]:
    """Token -> id. The order is fixed: specials, characters, then tags in task order, so
    adding a task appends ids and never moves existing ones."""
    tokens = SPECIALS + list(CHARACTERS) + [HIDDEN_TAG] + [t.tag for t in TASKS.values()]
    return {tok: i for i, tok in enumerate(tokens)}


def build_tokenizer():
    """The tokenizer as a transformers fast tokenizer, built in memory."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # A bracketed word is one piece (a tag), anything else one character.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\[[^\]]*\]|."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=MODEL_MAX_LENGTH, padding_side="right",
    )


def save_tokenizer(folder: str | os.PathLike) -> None:
    """Write tokenizer.json and tokenizer_config.json into `folder`."""
    build_tokenizer().save_pretrained(str(folder))


def load_tokenizer(folder: str | os.PathLike | None = None):
    """The tokenizer saved in `folder`, or the built-in one when the folder has none
    (a merge output may carry only config and weights; the vocabulary is fixed by code)."""
    if folder is not None and os.path.isfile(os.path.join(folder, "tokenizer.json")):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    return build_tokenizer()
