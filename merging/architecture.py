"""The one architecture check: do checkpoints share tensor names and shapes?

Used by the engine before a merge, by `models add` (a fine-tune against its base) and by
the features (base, A, B). Reads headers only (no torch).
"""
from __future__ import annotations

from typing import Sequence

from merging.dtypes import FLOAT_SAFETENSORS
from merging.errors import CheckpointError

LM_HEAD = "lm_head.weight"
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
# Tensors whose first dimension is the vocabulary.
VOCAB_SUFFIXES = EMBEDDING_SUFFIXES + (LM_HEAD, "embed_out.weight")


def check_same_architecture(reference, others: Sequence, *, allow_tied_lm_head: bool = True,
                            vocab_rows_may_differ: bool = False) -> list[str]:
    """Raise CheckpointError naming the first tensor whose presence, shape or kind (floating
    or not) differs between `reference` and any of `others` (Checkpoint objects).

    An lm_head that one side leaves out is accepted when that side's config ties word
    embeddings (it is then the embedding matrix). vocab_rows_may_differ: embeddings and
    lm_head may differ in their first (vocabulary) dimension. Returns the reference's tensor names
    that are floating point in every checkpoint, in the reference's order."""
    ref_names = set(reference.tensors)
    for other in others:
        names = set(other.tensors)
        for name in sorted(ref_names ^ names):
            if allow_tied_lm_head and name == LM_HEAD:
                lacking = other if name in ref_names else reference
                if lacking.tie_word_embeddings:
                    continue
            where, lacking = (reference, other) if name in ref_names else (other, reference)
            raise CheckpointError(f"architecture mismatch: tensor {name!r} is in {where.path} but not in {lacking.path}")
        for name in sorted(ref_names & names):
            a, b = reference.tensors[name], other.tensors[name]
            if a.shape != b.shape and not (vocab_rows_may_differ and name.endswith(VOCAB_SUFFIXES)
                                           and len(a.shape) == len(b.shape) and a.shape[1:] == b.shape[1:]):
                hint = (" (allow_vocab_mismatch / --allow-vocab-mismatch merges it over the common rows)"
                        if name.endswith(VOCAB_SUFFIXES) and a.shape[1:] == b.shape[1:] else "")
                raise CheckpointError(f"architecture mismatch: tensor {name!r} has shape {list(b.shape)} in "
                                      f"{other.path} but {list(a.shape)} in {reference.path}{hint}")
            if (a.dtype in FLOAT_SAFETENSORS) != (b.dtype in FLOAT_SAFETENSORS):
                raise CheckpointError(f"architecture mismatch: tensor {name!r} is floating point in one of "
                                      f"{reference.path}, {other.path} but not in the other")
    return [n for n in reference.tensors
            if reference.tensors[n].dtype in FLOAT_SAFETENSORS
            and all(n not in o.tensors or o.tensors[n].dtype in FLOAT_SAFETENSORS for o in others)]
