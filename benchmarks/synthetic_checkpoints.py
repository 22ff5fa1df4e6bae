"""Llama-shaped checkpoint folders of a chosen size, written to local disk for the benchmarks.

A base with seeded weights and N fine-tunes = base + a seeded delta (part of it a direction all
fine-tunes share, so pairs are partly kin). Tensors are generated shard by shard from seeds that
depend only on (checkpoint, tensor name): memory is one shard, whichever checkpoint is written,
and the same arguments always give the same bytes. Shards and an index as Hugging Face writes
them; config.json says LlamaForCausalLM with the matching sizes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

# hidden, intermediate, layers, attention heads, key/value heads, vocabulary
LLAMA_SIZES = {
    "tiny": (256, 688, 4, 4, 4, 32000),        # ~21M parameters
    "100m": (768, 2048, 8, 12, 4, 32000),      # ~99M: ~200 MB in bf16
    "1b": (2048, 5632, 22, 32, 4, 32000),      # ~1.1B (TinyLlama's shape): ~2.2 GB in bf16
    "7b": (4096, 11008, 32, 32, 32, 32000),    # ~6.7B (Llama-2-7B's shape): ~13.5 GB in bf16
}


def llama_shapes(size: str) -> dict[str, tuple[int, ...]]:
    hidden, inter, layers, heads, kv_heads, vocab = LLAMA_SIZES[size]
    kv = hidden // heads * kv_heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        })
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def parameter_count(size: str) -> int:
    total = 0
    for shape in llama_shapes(size).values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def _tensor(name: str, shape, model: int, dtype, device, scale: float, share: float):
    """Model 0 is the base; model i > 0 adds its delta, `share` of it common to all."""
    import torch

    def randn(*seed_parts):
        gen = torch.Generator(device=device).manual_seed(_seed(*seed_parts))
        return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)

    t = randn("base", name) * 0.02
    if len(shape) == 1:
        t += 1.0  # norm weights sit around 1
    if model:
        delta = randn("own", model, name) * (1.0 - share)
        if share:
            delta += randn("common", name) * share
        t += delta * (0.02 * scale)
    return t.to(dtype).cpu()


def write_checkpoint(folder: str | Path, size: str, model: int, *, dtype: str = "bfloat16",
                     shard_bytes: int = 2 * 1024 ** 3, device: str = "cpu", scale: float = 0.05,
                     share: float = 0.3) -> Path:
    import torch
    from safetensors.torch import save_file

    hidden, inter, layers, heads, kv_heads, vocab = LLAMA_SIZES[size]
    torch_dtype = getattr(torch, dtype)
    itemsize = torch.empty(0, dtype=torch_dtype).element_size()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = llama_shapes(size)
    shards: list[list[str]] = [[]]
    filled = 0
    for name, shape in shapes.items():
        nbytes = itemsize
        for s in shape:
            nbytes *= s
        if shards[-1] and filled + nbytes > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += nbytes
    weight_map = {}
    for i, names in enumerate(shards):
        file = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: _tensor(n, shapes[n], model, torch_dtype, device, scale, share) for n in names}
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
        del tensors
    if len(shards) > 1:
        total = sum(itemsize * _numel(s) for s in shapes.values())
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
              "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads, "tie_word_embeddings": False,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": dtype}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def write_catalog(root: str | Path, size: str, n_models: int, **kwargs) -> tuple[Path, dict[str, Path]]:
    """A base and `n_models` fine-tunes under `root`: (base folder, {name: folder})."""
    root = Path(root)
    base = write_checkpoint(root / "base", size, 0, **kwargs)
    models = {f"ft{i:02d}": write_checkpoint(root / f"ft{i:02d}", size, i, **kwargs) for i in range(1, n_models + 1)}
    return base, models


def folder_bytes(folders) -> int:
    return sum(f.stat().st_size for folder in folders for f in Path(folder).glob("*.safetensors"))
