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
    "220m": (1024, 2816, 12, 16, 16, 32000),   # ~220M (bench_merge's 220M): ~440 MB in bf16
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


_ST_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def _plan_shards(shapes: dict, itemsize: int, shard_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    filled = 0
    for name, shape in shapes.items():
        nbytes = itemsize * _numel(shape)
        if shards[-1] and filled + nbytes > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += nbytes
    return shards


def _header(names: list[str], shapes: dict, st_dtype: str, itemsize: int) -> bytes:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in names:
        nbytes = itemsize * _numel(shapes[name])
        header[name] = {"dtype": st_dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


def write_catalog(root: str | Path, size: str, n_models: int, *, dtype: str = "bfloat16",
                  shard_bytes: int = 2 * 1024 ** 3, device: str = "cpu", scale: float = 0.05,
                  share: float = 0.3) -> tuple[Path, dict[str, Path]]:
    """A base and `n_models` fine-tunes under `root`: (base folder, {name: folder}).

    All checkpoints are written side by side, tensor by tensor (safetensors written as a
    stream: header, then each tensor's bytes), so the base's weights and the shared direction
    are generated once per tensor, not once per checkpoint; memory is one tensor per model."""
    import torch

    hidden, inter, layers, heads, kv_heads, vocab = LLAMA_SIZES[size]
    torch_dtype = getattr(torch, dtype)
    itemsize = torch.empty(0, dtype=torch_dtype).element_size()
    shapes = llama_shapes(size)
    shards = _plan_shards(shapes, itemsize, shard_bytes)
    root = Path(root)
    folders = [root / "base"] + [root / f"ft{i:02d}" for i in range(1, n_models + 1)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    files = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]

    def randn(shape, *seed_parts):
        gen = torch.Generator(device=device).manual_seed(_seed(*seed_parts))
        return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)

    for names, file in zip(shards, files):
        header = _header(names, shapes, _ST_DTYPES[dtype], itemsize)
        outs = [open(folder / file, "wb") for folder in folders]
        try:
            for f in outs:
                f.write(header)
            for name in names:
                shape = shapes[name]
                base = randn(shape, "base", name) * 0.02
                if len(shape) == 1:
                    base += 1.0  # norm weights sit around 1
                common = randn(shape, "common", name) * share if share else 0.0
                for model, f in enumerate(outs):
                    t = base
                    if model:
                        t = base + (randn(shape, "own", model, name) * (1.0 - share) + common) * (0.02 * scale)
                    f.write(t.to(torch_dtype).cpu().contiguous().view(torch.uint8).numpy().tobytes())
        finally:
            for f in outs:
                f.close()
    weight_map = {n: file for names, file in zip(shards, files) for n in names}
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
              "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads, "tie_word_embeddings": False,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": dtype}
    for folder in folders:
        if len(shards) > 1:
            total = sum(itemsize * _numel(s) for s in shapes.values())
            (folder / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folders[0], {folder.name: folder for folder in folders[1:]}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def folder_bytes(folders) -> int:
    return sum(f.stat().st_size for folder in folders for f in Path(folder).glob("*.safetensors"))
