"""Examples to tensors, the same way for training and for scoring.

A row is `<s> prompt answer </s>` right-padded; its label row holds the answer and `</s>`
and -100 elsewhere. Right padding needs no attention mask with a causal model: padding
comes after every real token, so no real position can attend to it.
"""
from __future__ import annotations

from zoo.tasks import Example

IGNORE = -100


def encode_examples(tokenizer, examples: list[Example]):
    """(input_ids, labels) as LongTensors of shape (len(examples), longest row)."""
    import torch

    prompts = tokenizer([e.prompt for e in examples])["input_ids"]
    answers = tokenizer([e.answer for e in examples], add_special_tokens=False)["input_ids"]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [p + a + [eos] for p, a in zip(prompts, answers)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, rows)):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, len(p): len(r)] = torch.tensor(r[len(p):])
    return ids, labels
