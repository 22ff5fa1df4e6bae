"""The one dtype table: recipe names <-> torch attribute names <-> safetensors spellings.

Everything that reads a header, writes a shard, parses a recipe's `dtype` or converts a
tensor looks the dtype up here. Plain Python; `torch_dtype` imports torch when called.
"""
from __future__ import annotations

from typing import Any

from merging.errors import MergeError

# safetensors spelling -> (torch attribute, bytes per entry, floating point)
SAFETENSORS = {
    "F64": ("float64", 8, True), "F32": ("float32", 4, True), "F16": ("float16", 2, True),
    "BF16": ("bfloat16", 2, True), "F8_E4M3": ("float8_e4m3fn", 1, True), "F8_E5M2": ("float8_e5m2", 1, True),
    "I64": ("int64", 8, False), "I32": ("int32", 4, False), "I16": ("int16", 2, False), "I8": ("int8", 1, False),
    "U64": ("uint64", 8, False), "U32": ("uint32", 4, False), "U16": ("uint16", 2, False), "U8": ("uint8", 1, False),
    "BOOL": ("bool", 1, False),
}
DTYPE_BYTES = {st: nbytes for st, (_, nbytes, _) in SAFETENSORS.items()}
FLOAT_SAFETENSORS = frozenset(st for st, (_, _, floating) in SAFETENSORS.items() if floating)
# torch attribute name -> safetensors spelling
ST_OF_TORCH = {name: st for st, (name, _, _) in SAFETENSORS.items()}

# The dtypes a recipe may name (merge and output dtypes), with their accepted spellings.
RECIPE_DTYPES = ("float32", "float64", "bfloat16", "float16")
_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32", "f32": "float32",
    "float64": "float64", "fp64": "float64", "double": "float64", "f64": "float64",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16", "f16": "float16",
}


def canonical_dtype(name: Any, what: str = "dtype") -> str:
    """A recipe's dtype name in its one spelling (float32, float64, bfloat16, float16)."""
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in _ALIASES:
        raise MergeError(f"unknown {what} {name!r} (use float32, bfloat16, float16 or float64)")
    return _ALIASES[key]


def torch_dtype(name: str):
    """torch dtype for a recipe name (float32, bf16, ...) or a safetensors spelling (BF16)."""
    import torch

    attr = SAFETENSORS[name][0] if name in SAFETENSORS else canonical_dtype(name)
    return getattr(torch, attr)


def safetensors_dtype(dtype: Any) -> str:
    """Safetensors spelling of a torch dtype or a recipe name."""
    key = str(dtype).removeprefix("torch.")
    if key in ST_OF_TORCH:
        return ST_OF_TORCH[key]
    return ST_OF_TORCH[canonical_dtype(key)]
