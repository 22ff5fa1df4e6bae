"""One command for a machine with a GPU (or without): merges, all-pairs features and in-memory
trial merges on Llama-shaped checkpoints generated on local disk, against the I/O floor.

On CUDA (default sizes): merges at 1b and 7b (~2.2 GB and ~13.5 GB per checkpoint, bf16, 2 GB
shards; a base and two fine-tunes), all-pairs structural features for N = 8 fine-tunes at 1b.
On a CPU-only machine the same at `--size tiny` (~21M parameters), unless told otherwise.
Printed, per size:
  - TIES and linear merge (`merging.engine.run_merge`, to disk) seconds and their ratio to the
    floor: reading every input once and writing one output's bytes once;
  - all-pairs structural features (`features.structural_all.scan_catalog`) seconds and the ratio
    to reading the N + 1 checkpoints once;
  - in-memory merges per second: the two fine-tunes and the base resident on the device, a TIES
    merge of every tensor into a state dict (no disk), the inner loop of a trial merge;
  - trial merges at one merge size (`--trial-size`, default the smallest): every default arm
    through `features.trial.TrialRunner.trial`, the code `propose --trial-merges` runs per action
    (the engine merges into a state dict, the state is loaded into the architecture, both
    experts' reference continuations are teacher-forced), with seconds per arm split into merge /
    load / probes; the references (computed once per expert and cached) and building the
    architecture (once per runner) are printed apart. The checkpoints carry no tokenizer, so a
    word-level one over the probes' words is written into the base (about one token per word,
    like a 32k BPE vocabulary; the ids fit the 32000-row embedding). Probes: the built-in generic
    set, `--trial-probes` of them per expert, `--trial-new-tokens` long continuations (default
    32 and 32 as propose, on the CPU 8 and 8: greedy references re-run the whole prefix per
    token, minutes at 220M on two cores);
  - peak GPU memory of each step (torch.cuda.max_memory_allocated).
Device choice through `merging.device.resolve_device` (the one place). Needs free disk: about
(N + 1) x the features size + 4 x the largest merge size (7b: ~75 GB in all). Everything written
is deleted at the end unless --keep.

    python benchmarks/bench_device.py [--device auto] [--size tiny|100m|220m|1b|7b]
        [--merge-sizes 1b,7b] [--feature-size 1b] [--models 8] [--trial-size SIZE]
        [--trial-probes N] [--trial-new-tokens T] [--workdir DIR] [--keep]

The 220M figure of #10 (CPU): `--device cpu --merge-sizes 220m --feature-size tiny`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

TIES_PARAMS = {"weight": [0.5, 0.5], "density": 0.5}
LINEAR_PARAMS = {"weight": [0.5, 0.5]}


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gb(dev) -> str:
    import torch

    return f"{torch.cuda.max_memory_allocated(dev) / 1e9:.2f}" if dev.type == "cuda" else "-"


def _drop_cache(folders) -> None:
    """Forget the files' pages, so reads come from the disk (as right after a copy elsewhere)."""
    import os

    for folder in folders:
        for f in Path(folder).glob("*.safetensors"):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_floor(folders, scratch: Path | None = None, write_bytes: int = 0) -> float:
    """Seconds to read every weight file of `folders` once (and write `write_bytes` once,
    fsynced as a merge's output is): bench_merge's floor, so both benchmarks mean the same."""
    from bench_merge import io_floor

    return io_floor([Path(f) for f in folders], write_bytes, scratch)[0]


def bench_merges(size: str, workdir: Path, dev, *, cold: bool, trials: dict | None = None) -> None:
    from merging.engine import run_merge
    from merging.recipe import Recipe
    from synthetic_checkpoints import folder_bytes, parameter_count, write_catalog

    root = workdir / f"merge-{size}"
    t0 = time.perf_counter()
    base, models = write_catalog(root, size, 2, device="cuda" if dev.type == "cuda" else "cpu")
    fts = list(models.values())
    each = folder_bytes([base])
    print(f"\n== merges at {size}: {parameter_count(size) / 1e9:.2f}B parameters, {each / 1e9:.2f} GB per "
          f"checkpoint (bf16), written in {time.perf_counter() - t0:.0f} s")
    for op, params, inputs in (("ties", TIES_PARAMS, [base, *fts]), ("linear", LINEAR_PARAMS, fts)):
        if cold:
            _drop_cache(inputs)
        floor = read_floor(inputs, root / "floor.bin", each)
        recipe = Recipe.from_arm(op, params, fts, base, dtype="float32", out_dtype="bfloat16")
        out = root / f"out-{op}"
        if cold:
            _drop_cache(inputs)
        _reset_peak(dev)
        t0 = time.perf_counter()
        run_merge(recipe, out, device=str(dev), progress=False)
        _sync(dev)
        seconds = time.perf_counter() - t0
        print(f"{op:>7} merge: {seconds:7.1f} s, floor (read inputs + write output) {floor:6.1f} s, "
              f"ratio {seconds / floor:5.2f}, peak GPU {_peak_gb(dev)} GB")
        shutil.rmtree(out, ignore_errors=True)
    in_memory_merges(base, fts, dev)
    if trials is not None:
        measure_trial_merges(base, fts, dev, root, **trials)
    shutil.rmtree(root, ignore_errors=True)


def in_memory_merges(base, fts, dev, *, seconds: float = 20.0) -> None:
    """TIES of the two fine-tunes over the base, every tensor, weights resident on the device."""
    import torch

    from merging.checkpoint import Checkpoint
    from merging.registry import OperatorParams, get_operator, validate_params

    cks = [Checkpoint(p) for p in (base, *fts)]
    names = [n for n in cks[0].tensors if cks[0].tensors[n].dtype in ("BF16", "F16", "F32")]
    needed = sum(ck.tensors[n].numel * 2 for ck in cks for n in names)
    if dev.type == "cuda" and needed * 3 > torch.cuda.mem_get_info(dev)[0]:
        print(f"in-memory merges: skipped, three resident checkpoints ({needed / 1e9:.1f} GB) do not fit the GPU")
        return
    weights = {n: [ck.tensor(n, dev) for ck in cks] for n in names}
    fn = get_operator("ties").function
    params = validate_params("ties", TIES_PARAMS, 2)
    _reset_peak(dev)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)  # on shared cores a second intra-op thread only waits (measured 3x slower)
    merges = 0
    t0 = time.perf_counter()
    while True:
        state = {}
        for n, (b, a, c) in weights.items():
            state[n] = fn(b.float(), [a.float(), c.float()], OperatorParams(params, n, 0)).to(b.dtype)
        _sync(dev)
        merges += 1
        del state
        if time.perf_counter() - t0 > seconds:
            break
    rate = merges / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    print(f"in-memory TIES merges (weights on {dev.type}, operator only): {rate:.2f} per second, "
          f"peak GPU {_peak_gb(dev)} GB")
    del weights
    for ck in cks:
        ck.close()


def word_tokenizer(texts, folder: Path):
    """A word-level tokenizer over the words of `texts` (plus <pad> <unk> <s> </s>), saved into
    `folder`: the generated checkpoints have none, and trial merges tokenize the probes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    split = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    words = sorted({w for t in texts for w, _ in split.pre_tokenize_str(t)})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = split
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")
    fast.save_pretrained(str(folder))
    return fast


def measure_trial_merges(base, fts, dev, workdir: Path, *, probes: int, new_tokens: int) -> None:
    """Every default arm as one trial merge of (ft01, ft02) over the base, as propose runs it."""
    import torch

    from bandit.arms import DEFAULT_ARMS
    from features.functional import generic_probes
    from features.trial import TrialRunner
    from merging.checkpoint import Checkpoint

    with Checkpoint(base) as ck:
        params = sum(info.numel for info in ck.tensors.values())
    free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else _available_ram()
    # The float32 model, its float32 copy of the merged state, and the merged state itself.
    if 3 * 4 * params > free:
        print(f"trial merges: skipped, {params / 1e9:.1f}B parameters in float32 ({3 * 4 * params / 1e9:.0f} GB "
              f"with the merged state) do not fit {free / 1e9:.0f} GB free")
        return
    texts = generic_probes()
    texts = [texts[i % len(texts)] for i in range(probes)]
    tokenizer = word_tokenizer(texts, Path(base))
    tokens = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    _reset_peak(dev)
    t0 = time.perf_counter()
    runner = TrialRunner(base, fts[0], fts[1], texts, texts, device=str(dev), max_new_tokens=new_tokens,
                         cache_dir=workdir / "trial-cache")
    print(f"trial merges, {params / 1e6:.0f}M parameters on {dev.type} ({torch.get_num_threads()} threads): "
          f"{probes} probes per expert ({tokens} prompt tokens), continuations up to {new_tokens} tokens; "
          f"both experts' references (once per expert, then cached) {time.perf_counter() - t0:.1f} s")
    print(f"  {'arm':<18} {'total s':>8} {'merge s':>8} {'load s':>7} {'probes s':>9} {'scored tokens':>14}")
    scored = 2 * tokens + runner.refs_a.positions + runner.refs_b.positions  # prompt + continuation, both experts
    totals = []
    for arm, op, arm_params in DEFAULT_ARMS:
        t0 = time.perf_counter()
        result = runner.trial(op, arm_params)
        _sync(dev)
        total = time.perf_counter() - t0
        if not totals:
            total -= runner.architecture_seconds  # built once per runner, like a live service's
        totals.append((total, result.merge_seconds, result.load_seconds, result.score_seconds))
        print(f"  {arm:<18} {total:8.2f} {result.merge_seconds:8.2f} {result.load_seconds:7.2f} "
              f"{result.score_seconds:9.2f} {scored:>14}")
    n = len(totals)
    mean = [sum(row[i] for row in totals) / n for i in range(4)]
    print(f"  {'mean per arm':<18} {mean[0]:8.2f} {mean[1]:8.2f} {mean[2]:7.2f} {mean[3]:9.2f}   "
          f"(architecture built once: {runner.architecture_seconds:.1f} s; peak GPU {_peak_gb(dev)} GB)")


def _available_ram() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def bench_features(size: str, n_models: int, workdir: Path, dev, budget: int, *, cold: bool) -> None:
    from features.structural_all import scan_catalog
    from synthetic_checkpoints import folder_bytes, parameter_count, write_catalog

    root = workdir / f"features-{size}"
    t0 = time.perf_counter()
    base, models = write_catalog(root, size, n_models, device="cuda" if dev.type == "cuda" else "cpu")
    folders = [base, *models.values()]
    total = folder_bytes(folders)
    print(f"\n== all-pairs structural features at {size}: base + {n_models} fine-tunes, "
          f"{parameter_count(size) / 1e9:.2f}B parameters each, {total / 1e9:.1f} GB in all, written in "
          f"{time.perf_counter() - t0:.0f} s")
    if cold:
        _drop_cache(folders)
    floor = read_floor(folders)
    if cold:
        _drop_cache(folders)
    _reset_peak(dev)
    t0 = time.perf_counter()
    scan = scan_catalog(str(base), {k: str(v) for k, v in models.items()}, device=str(dev), memory_budget=budget)
    _sync(dev)
    seconds = time.perf_counter() - t0
    pairs = len(scan.all_pairs())
    print(f"{pairs} ordered pairs: {seconds:.1f} s, read once {floor:.1f} s, ratio {seconds / floor:.2f}; "
          f"{scan.bytes_read / 1e9:.1f} GB read ({scan.tensors_read_in_parts} tensors in parts, budget "
          f"{budget / 1e9:.1f} GB), peak GPU {_peak_gb(dev)} GB")
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", help="one size for everything (tiny, 100m, 1b, 7b)")
    parser.add_argument("--merge-sizes", help="default: 1b,7b on CUDA, tiny on the CPU")
    parser.add_argument("--feature-size", help="default: 1b on CUDA, tiny on the CPU")
    parser.add_argument("--models", type=int, default=8, help="fine-tunes for the all-pairs features")
    parser.add_argument("--memory-budget", type=float, help="GB for one tensor of every model (default: "
                        "half the free GPU memory, at most 16; 1 on the CPU)")
    parser.add_argument("--trial-size", help="the merge size at which to run trial merges (default: the smallest)")
    parser.add_argument("--trial-probes", type=int, help="probes per expert (default 32 on CUDA, 8 on the CPU)")
    parser.add_argument("--trial-new-tokens", type=int, help="continuation length (default 32 on CUDA, 8 on the CPU)")
    parser.add_argument("--cold", action="store_true", help="drop the files from the page cache before each run")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    import torch

    from merging.device import resolve_device
    from synthetic_checkpoints import LLAMA_SIZES, parameter_count

    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    merge_sizes = (args.size or args.merge_sizes or ("1b,7b" if cuda else "tiny")).split(",")
    feature_size = args.size or args.feature_size or ("1b" if cuda else "tiny")
    for s in [*merge_sizes, feature_size]:
        if s not in LLAMA_SIZES:
            raise SystemExit(f"unknown size {s!r}: one of {', '.join(LLAMA_SIZES)}")
    trial_size = args.trial_size or min(merge_sizes, key=lambda s: parameter_count(s))
    if trial_size not in merge_sizes:
        raise SystemExit(f"--trial-size {trial_size!r} is not one of the merge sizes ({', '.join(merge_sizes)})")
    trials = {"probes": args.trial_probes or (32 if cuda else 8),
              "new_tokens": args.trial_new_tokens or (32 if cuda else 8)}
    if args.memory_budget:
        budget = int(args.memory_budget * 1e9)
    elif cuda:
        budget = int(min(16e9, torch.cuda.mem_get_info(dev)[0] / 2))
    else:
        budget = 1 << 30
    name = torch.cuda.get_device_name(dev) if cuda else "CPU"
    print(f"device: {dev} ({name}), torch {torch.__version__}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_device_"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        bench_features(feature_size, args.models, workdir, dev, budget, cold=args.cold)
        for size in merge_sizes:
            bench_merges(size, workdir, dev, cold=args.cold, trials=trials if size == trial_size else None)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
