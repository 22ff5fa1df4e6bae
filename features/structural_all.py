"""Structural features for every pair of N fine-tunes of one base, in one pass over the weights.

Each tensor is read once from the base and once from every model; the N deltas of that tensor
are stacked as the rows of D (N × entries, float64, chunk by chunk) and every sum that the
pairwise code (`features.structural.DeltaStats`) accumulates for one pair comes out of a few
N × N matrix products:

- D Dᵀ: ⟨δ_i, δ_j⟩ for the kinship cosine, Euclidean ratio and norm ratio, and, kept per
  tensor, the per-block / attention / MLP cosines; with D θ₀ (one matrix-vector product) and
  ⟨θ₀, θ₀⟩ it also gives ⟨θ_i, θ_j⟩ for weight_cos, without a second N × N product;
- the row sums of D with D Dᵀ: Pearson, merged chunk by chunk as co-moments (Chan et al.);
- sign(D) sign(D)ᵀ = same-direction − opposite-direction counts and |sign D| |sign D|ᵀ = entries
  both changed; their half-sum is the same-direction count;
- M Mᵀ for the 0/1 top-k masks: per tensor, each pair's intersection, and on the diagonal each
  mask's size, so the Jaccard of every pair.
D Dᵀ is float64. The counts (signs, masks, the split around each top-k bracket) are exact
integers from `features.pair_counts`: float32 products on a GPU, bit-packed popcounts on the
CPU.

The per-pair numbers then go through `DeltaStats.features`: one definition of the features,
whichever path summed them.

Memory: one tensor at a time. When the base's and the N models' copies of it (stored dtype)
fit in `memory_budget`, the tensor is read once and worked on in float64 chunks of
`WORK_ENTRIES / N` entries per row, in work buffers allocated once per pass; otherwise it is
read in parts (`Checkpoint.tensor_range`), each part once per pass. The top-k thresholds are
exact per tensor and model: small tensors select among all entries; large ones bracket the k-th
largest |δ| from a stratified sample, count what lies above the bracket and keep the entries
inside it (during the statistics pass when the tensor is held whole, else in a pass of its
own), select the threshold among those, and a last pass forms the masks. A bracket that misses
is widened and counted again: it costs time, never accuracy.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from features.errors import FeatureError
from features.pair_counts import counts_for
from features.structural import (TOPK_FRACTION, TOPK_MARGIN, TOPK_SAMPLE, DeltaStats, _Dots, compared_tensors,
                                 block_of, group_of)

# Entries in one work matrix (N rows × chunk): 2 MB in float64, so that the buffers of a pass
# stay in the CPU's cache while the ~20 operations of a chunk run over them.
WORK_ENTRIES = 1 << 18
GPU_WORK_ENTRIES = 1 << 24
DEFAULT_MEMORY_BUDGET = 1 << 30
# Bytes of work buffers per entry of a row (`_Buffers`: deltas and scratch in float64, counting
# scratch in float32 on a GPU, two boolean masks).
WORK_BYTES_PER_ENTRY = 8 + 8 + 4 + 1 + 1
_TINY = math.ulp(0.0)

# A part of one tensor: (base entries, [each model's entries]), 1-D, stored dtype, on the device.
Reader = Callable[[int, int], tuple[object, list]]


@dataclass
class _Bracket:
    k: int
    lo: float
    hi: float
    widenings: int = 0


class _Buffers:
    """The work matrices of one pass over a tensor, allocated once and sliced per chunk."""

    def __init__(self, n: int, chunk: int, device, kernels):
        import torch

        counts = kernels.scratch_dtype(chunk)
        self.delta = torch.empty(n, chunk, dtype=torch.float64, device=device)
        self.work = torch.empty(n, chunk, dtype=torch.float64, device=device)
        self.base = torch.empty(chunk, dtype=torch.float64, device=device)
        self.counts = None if counts is None else torch.empty(n, chunk, dtype=counts, device=device)
        self.flag = torch.empty(n, chunk, dtype=torch.bool, device=device)
        self.band = torch.empty(n, chunk, dtype=torch.bool, device=device)

    def at(self, m: int):
        """The first m columns of every buffer: (deltas, scratch, base, counting scratch,
        flag, band)."""
        counts = None if self.counts is None else self.counts[:, :m]
        return self.delta[:, :m], self.work[:, :m], self.base[:m], counts, self.flag[:, :m], self.band[:, :m]


class _BandValues:
    """The |δ| inside each model's bracket, gathered chunk by chunk into one flat buffer that
    doubles when full, with each chunk's per-model counts in a table; `row(i)` puts model i's
    together. Kept per chunk as separate small tensors they would fragment the heap (see
    `AllPairsStats._pass`)."""

    def __init__(self, n: int, chunks: int, device):
        import torch

        self.values = torch.empty(1 << 16, dtype=torch.float64, device=device)
        self.used = 0
        self.counts = torch.zeros(chunks, n, dtype=torch.int64, device=device)
        self.chunks = 0

    def add(self, selected, counts) -> None:
        """One chunk's band values, grouped by model, and how many each model has."""
        import torch

        self.counts[self.chunks] = counts
        self.chunks += 1
        end = self.used + selected.numel()
        if end > self.values.numel():
            grown = torch.empty(max(end, 2 * self.values.numel()), dtype=self.values.dtype, device=self.values.device)
            grown[:self.used] = self.values[:self.used]
            self.values = grown
        self.values[self.used:end] = selected
        self.used = end

    def row(self, i: int):
        import torch

        counts = self.counts[:self.chunks]
        starts = torch.cumsum(counts.reshape(-1), 0).reshape(counts.shape) - counts
        parts = [self.values[s:s + c] for s, c in zip(starts[:, i].tolist(), counts[:, i].tolist()) if c]
        return torch.cat(parts) if parts else self.values.new_empty(0)


@dataclass
class _PassResult:
    gram: object = None          # this tensor's D Dᵀ
    sample: object = None        # |δ| at the sample's entries (N × s)
    above: list | None = None    # per model, entries above its bracket
    inside: "_BandValues | None" = None  # per model, the |δ| inside its bracket
    inter: object = None         # this tensor's top-k mask intersections


@dataclass
class AllPairsStats:
    """Running N × N statistics of the deltas of N models over one base, fed one tensor at a
    time through `add`; `pair(i, j)` gives the features of the ordered pair (i, j)."""

    n_models: int
    device: object = "cpu"
    chunk: int | None = None
    topk_fraction: float = TOPK_FRACTION
    topk_sample: int = TOPK_SAMPLE
    topk_margin: float = TOPK_MARGIN
    tensors: int = 0
    topk_widenings: int = 0  # brackets that missed and were counted again
    blocks: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)

    def __post_init__(self):
        import torch

        n = self.n_models
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=self.device)  # noqa: E731
        self.count = 0
        self.mean = zeros(n)
        self.comoment = zeros(n, n)
        self.delta = zeros(n, n)
        self.weight = zeros(n, n)
        self.same_sign = zeros(n, n)
        self.both_changed = zeros(n, n)
        self.topk_weighted = zeros(n, n)
        self.topk_weight = zeros(n, n)

    def chunk_for(self, numel: int) -> int:
        return max(1, min(numel, self.chunk or _whole_words(WORK_ENTRIES // self.n_models)))

    # -- one tensor ------------------------------------------------------------------------
    def add(self, name: str, numel: int, read: Reader, *, in_memory: bool) -> None:
        """Add one tensor of every model. `read(start, stop)` gives those entries of the base
        and of each model; `in_memory` says re-reading them costs no I/O."""
        import torch

        if numel == 0:
            return
        self.tensors += 1
        k = min(numel, max(1, math.ceil(self.topk_fraction * numel)))
        if numel <= 4 * self.topk_sample:
            # Small: select each model's threshold among all its entries, then one pass.
            base, models = read(0, numel)
            mags = (torch.stack([m.to(torch.float64) for m in models]) - base.to(torch.float64)).abs_()
            thresholds = torch.kthvalue(mags, numel - k + 1, dim=1).values
            del mags, base, models
            done = self._pass(numel, read, stats=True, thresholds=thresholds)
        elif in_memory:
            # The sample costs no read here, so the statistics pass also counts each model's
            # entries above its bracket and keeps those inside it (so its exact threshold);
            # a second pass forms the masks. Forming them beside the statistics from the sure
            # parts and revisiting the columns a bracket left open cost more: with N brackets
            # of a few % each, a third or more of the columns are open (bf16 ties widen them).
            base, models = read(0, numel)
            idx = self._sample_indices(numel).to(base.device)
            sample = (torch.stack([m[idx].to(torch.float64) for m in models]) - base[idx].to(torch.float64)).abs_()
            del base, models
            brackets = self._brackets(sample, k, numel)
            done = self._pass(numel, read, stats=True, brackets=brackets)
            thresholds = self._settle(numel, read, sample, brackets, done)
            done.inter = self._pass(numel, read, stats=False, thresholds=thresholds).inter
        else:
            # Read in parts: every pass reads again, so the sample is gathered during the
            # statistics pass, the brackets counted in a second and the masks formed in a third.
            done = self._pass(numel, read, stats=True, sample_idx=self._sample_indices(numel))
            brackets = self._brackets(done.sample, k, numel)
            thresholds = self._settle(numel, read, done.sample, brackets, None)
            done.inter = self._pass(numel, read, stats=False, thresholds=thresholds).inter
        self._add_topk(numel, done.inter)
        self._add_grouped(name, done.gram)

    def _pass(self, numel: int, read: Reader, *, stats: bool, sample_idx=None, brackets=None,
              thresholds=None) -> "_PassResult":
        """One walk over the tensor's chunks; what it gathers depends on what it is given.

        Every per-chunk buffer is allocated once per pass (`_Buffers`): a fresh temporary per
        chunk, between the small results that outlive it (the values inside the brackets),
        fragments the heap, which then grows by about a chunk per chunk (measured +1 GB of
        RSS on a 24M-entry tensor of 12 models)."""
        import torch

        n, c = self.n_models, self.chunk_for(numel)
        f64 = torch.float64
        kernels = counts_for(torch.device(self.device))
        buf = _Buffers(n, c, self.device, kernels)
        out = _PassResult()
        out.gram = torch.zeros(n, n, dtype=f64, device=self.device) if stats else None
        if thresholds is not None:
            out.inter = torch.zeros(n, n, dtype=f64, device=self.device)
            # |δ| ≥ max(t, smallest double) is "|δ| ≥ t and δ ≠ 0" in one comparison.
            thr = thresholds.to(device=self.device, dtype=f64).clamp(min=_TINY).reshape(n, 1)
        samples = []
        above = torch.zeros(n, dtype=torch.int64, device=self.device)
        if brackets is not None:
            lo = torch.tensor([[max(b.lo, _TINY)] for b in brackets], dtype=f64, device=self.device)
            hi = torch.tensor([[b.hi] for b in brackets], dtype=f64, device=self.device)
            inside = _BandValues(n, -(-numel // c), self.device)
        for start in range(0, numel, c):
            stop = min(start + c, numel)
            m = stop - start
            base, models = read(start, stop)
            ds, ws, b, counts, flag, band = buf.at(m)
            for row, model in enumerate(models):
                ds[row].copy_(model)
            b.copy_(base)
            ds -= b
            del base, models
            if stats:
                self._add_chunk_stats(ds, b, out.gram)
                same, both = kernels.signs(ds, ws, counts, (flag, band))
                self.same_sign += same
                self.both_changed += both
            if sample_idx is not None:
                lo_pos, hi_pos = (int(v) for v in torch.searchsorted(sample_idx, torch.tensor([start, stop])))
                if hi_pos > lo_pos:
                    samples.append(ds[:, (sample_idx[lo_pos:hi_pos] - start).to(self.device)].abs())
            if brackets is None and thresholds is None:
                continue
            torch.abs(ds, out=ws)
            if brackets is not None:
                counted, values, per_row = kernels.split_band(ws, lo, hi, flag, band)
                above += counted
                inside.add(values, per_row)
            if thresholds is not None:
                out.inter += kernels.mask_products(ws, thr, counts, flag)
        out.sample = torch.cat(samples, dim=1) if samples else None
        if brackets is not None:
            out.above = [int(v) for v in above.tolist()]
            out.inside = inside
        return out

    def _add_chunk_stats(self, ds, b, gram) -> None:
        """The chunk's sums of products, from its deltas `ds` (N × m) and the base's entries
        `b` (m); the sign counts come from the counting kernels."""
        import torch

        m = ds.shape[1]
        g = ds @ ds.T
        _exact_for_identical_rows(g, ds)
        gram += g
        # ⟨θ_i, θ_j⟩ = ⟨δ_i, δ_j⟩ + ⟨δ_i, θ₀⟩ + ⟨δ_j, θ₀⟩ + ⟨θ₀, θ₀⟩: one matrix-vector product
        # instead of a second N × N Gram over the weights. The terms are float64 sums of exact
        # products like the pairwise code's, so the cosine agrees to rounding (~1e-16).
        with_base = ds @ b
        self.weight += g + with_base[:, None] + with_base[None, :] + torch.dot(b, b)
        # Co-moments of this chunk, merged into the running ones (Chan et al.): free of the
        # cancellation raw sums of squares suffer when the deltas share an offset.
        sums = ds.sum(dim=1)
        mean_chunk = sums / m
        co = g - torch.outer(sums, mean_chunk)
        total = self.count + m
        shift = mean_chunk - self.mean
        self.comoment += co + torch.outer(shift, shift) * (self.count * m / total)
        self.mean += shift * (m / total)
        self.count = total

    # -- top-k thresholds ----------------------------------------------------------------------
    def _sample_indices(self, numel: int):
        """Stratified: one seeded random entry in each of `topk_sample` equal strides (the
        pairwise code's sample, so both bracket alike), ascending so parts are read in order."""
        import torch

        gen = torch.Generator(device="cpu").manual_seed(numel)
        s = self.topk_sample
        step = numel // s
        return torch.arange(s) * step + torch.randint(step, (s,), generator=gen)

    def _brackets(self, sample, k: int, numel: int, widenings: list[int] | None = None) -> list[_Bracket]:
        """Per model, the sample quantiles `topk_margin` standard deviations either side of
        the k-th largest; each widening multiplies the margin by 4, the third opens it fully.
        Models at the same widening share their ranks, so both quantiles of all of them come
        from one partial sort (numpy's partition with two ranks: about 2.5x faster than two
        selections per model)."""
        import numpy as np

        values = sample.cpu().numpy()
        n, s = values.shape
        p = k / numel
        levels = widenings or [0] * n
        out: list[_Bracket | None] = [None] * n
        for w in sorted(set(levels)):
            rows = [row for row in range(n) if levels[row] == w]
            if w >= 3:
                for row in rows:
                    out[row] = _Bracket(k, 0.0, math.inf, w)  # every non-zero entry is inside
                continue
            centre = s * (1.0 - p)
            margin = self.topk_margin * (4 ** w) * math.sqrt(s * p * (1.0 - p)) + 1.0
            lo_rank, hi_rank = math.floor(centre - margin), math.ceil(centre + margin)
            # 1-based ranks of the k-th smallest, as positions in a partitioned row
            lo_at = None if lo_rank < 1 else min(s, lo_rank) - 1
            hi_at = None if hi_rank > s else max(1, hi_rank) - 1
            ranks = sorted({r for r in (lo_at, hi_at) if r is not None})
            part = np.partition(values[rows], ranks, axis=1) if ranks else None
            for i, row in enumerate(rows):
                lo = 0.0 if lo_at is None else float(part[i, lo_at])
                hi = math.inf if hi_at is None else float(part[i, hi_at])
                out[row] = _Bracket(k, lo, hi, w)
        return out

    def _settle(self, numel: int, read: Reader, sample, brackets: list[_Bracket], done):
        """The exact k-th largest |δ| of every model from what its bracket counted (a pass over
        the brackets first when `done` has not counted them); a bracket that missed is widened
        and counted again."""
        import torch

        thresholds: list[float | None] = [None] * self.n_models
        while True:
            if done is None:
                done = self._pass(numel, read, stats=False, brackets=brackets)
            for row, br in enumerate(brackets):
                if thresholds[row] is not None:
                    continue
                values = done.inside.row(row)
                need = br.k - done.above[row]
                if 0 < need <= values.numel():
                    thresholds[row] = float(torch.kthvalue(values, values.numel() - need + 1).values)
                elif need > values.numel() and br.lo <= 0.0:
                    thresholds[row] = 0.0  # fewer than k non-zero entries: all of them are kept
            missed = [row for row, t in enumerate(thresholds) if t is None]
            if not missed:
                return torch.tensor(thresholds, dtype=torch.float64)
            self.topk_widenings += 1
            widenings = [br.widenings + (1 if row in missed else 0) for row, br in enumerate(brackets)]
            brackets = self._brackets(sample, brackets[0].k, numel, widenings)
            done = None

    # -- accumulating ------------------------------------------------------------------------
    def _add_topk(self, numel: int, inter) -> None:
        import torch

        sizes = torch.diagonal(inter)
        union = sizes[:, None] + sizes[None, :] - inter
        changed = union > 0
        # Weighted by tensor size; a tensor neither model of a pair changed says nothing.
        self.topk_weighted += torch.where(changed, numel * inter / torch.where(changed, union, 1.0), 0.0)
        self.topk_weight += changed.to(torch.float64) * numel

    def _add_grouped(self, name: str, gram) -> None:
        self.delta += gram
        blk = block_of(name)
        if blk is None:
            return
        self.blocks[blk] = self.blocks[blk] + gram if blk in self.blocks else gram.clone()
        grp = group_of(name)
        if grp is not None:
            key = (blk, grp)
            self.groups[key] = self.groups[key] + gram if key in self.groups else gram.clone()

    # -- results -----------------------------------------------------------------------------
    def pair(self, i: int, j: int) -> dict[str, float]:
        """The structural features of the ordered pair (model i, model j)."""
        return self._pair_stats(i, j).features()

    def _pair_stats(self, i: int, j: int) -> DeltaStats:
        if not hasattr(self, "_cpu"):
            names = ("mean", "comoment", "delta", "weight", "same_sign", "both_changed", "topk_weighted", "topk_weight")
            self._cpu = {n: getattr(self, n).cpu().tolist() for n in names}
            self._cpu["blocks"] = {b: g.cpu().tolist() for b, g in self.blocks.items()}
            self._cpu["groups"] = {key: g.cpu().tolist() for key, g in self.groups.items()}
        c = self._cpu
        lo, hi = min(i, j), max(i, j)  # one triangle: (i, j) and (j, i) read the same sums

        def dots(g) -> _Dots:
            return _Dots(g[lo][hi], g[i][i], g[j][j])

        both = int(round(c["both_changed"][lo][hi]))
        same = int(round(c["same_sign"][lo][hi]))
        return DeltaStats(
            n=self.count, mean_a=c["mean"][i], mean_b=c["mean"][j],
            c_aa=c["comoment"][i][i], c_bb=c["comoment"][j][j], c_ab=c["comoment"][lo][hi],
            delta=dots(c["delta"]), weight=dots(c["weight"]),
            sign_agree=same, sign_disagree=both - same,
            topk_weighted=c["topk_weighted"][lo][hi], topk_weight=int(round(c["topk_weight"][lo][hi])),
            blocks={b: dots(g) for b, g in c["blocks"].items()},
            groups={key: dots(g) for key, g in c["groups"].items()},
        )


def _whole_words(chunk: int) -> int:
    """A chunk length that is a whole number of 64-entry words (at least 256), so the CPU's
    bit-packed counts need no padding except at a tensor's end."""
    return max(256, chunk - chunk % 64)


def _exact_for_identical_rows(gram, rows) -> None:
    """A product's entries for two identical rows can differ from their squared norms in the
    last bit (the BLAS blocks them differently), which would make ‖δ_i − δ_j‖ = √(rounding)
    instead of 0. Rows whose norms agree bitwise are compared, and equal ones made exact."""
    import torch

    diag = torch.diagonal(gram)
    suspect = (diag[:, None] == diag[None, :]) & (gram != diag[:, None])
    if not bool(suspect.any()):
        return
    for i, j in suspect.nonzero().tolist():
        if i != j and torch.equal(rows[i], rows[j]):
            gram[i, j] = gram[j, i] = diag[i]


# -- reading a catalog -----------------------------------------------------------------------
@dataclass
class CatalogScan:
    """What one pass over a catalog produced: the statistics, and what it cost in reads."""

    names: list[str]
    stats: AllPairsStats
    bytes_read: int
    tensors_read_in_parts: int

    def features(self, a: str, b: str) -> dict[str, float]:
        return self.stats.pair(self.names.index(a), self.names.index(b))

    def all_pairs(self) -> dict[tuple[str, str], dict[str, float]]:
        """Every ordered pair of distinct models."""
        return {(a, b): self.stats.pair(i, j) for i, a in enumerate(self.names)
                for j, b in enumerate(self.names) if i != j}


def check_catalog_architecture(base, models: dict) -> list[str]:
    """The float tensors to compare, in the base's order (merging's one check, as for a pair);
    a mismatch names the model as the catalog calls it."""
    for label, ck in models.items():
        try:
            compared_tensors(base, [ck])
        except FeatureError as e:
            raise FeatureError(f"model {label!r}: {e}") from None
    return compared_tensors(base, list(models.values()))


def scan_catalog(base: str, models: dict[str, str], *, device: str = "auto",
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, progress: bool = False, chunk: int | None = None,
                 topk_sample: int = TOPK_SAMPLE, topk_margin: float = TOPK_MARGIN) -> CatalogScan:
    """Read the base and every model once (tensor by tensor) and gather the statistics of all
    pairs. `models`: {name: checkpoint folder}, at least two. `memory_budget` (bytes) bounds
    one tensor's copies plus the work matrices; `chunk`, `topk_sample`, `topk_margin` change
    speed, never results."""
    from merging.checkpoint import Checkpoint
    from merging.dtypes import DTYPE_BYTES
    from merging.device import intra_op_threads, resolve_device
    from merging.errors import CheckpointError, MergeError

    if len(models) < 2:
        raise FeatureError(f"all-pairs features need at least two models, got {len(models)}")
    if memory_budget <= 0:
        raise FeatureError(f"memory budget must be positive, got {memory_budget}")
    try:
        dev = resolve_device(device)
        base_ck = Checkpoint(base)
        cks = {name: Checkpoint(path) for name, path in models.items()}
    except MergeError as e:
        raise FeatureError(str(e)) from None
    n = len(cks)
    all_cks = [base_ck, *cks.values()]
    # The work matrices take at most half the budget; a tensor whose copies fit the rest is
    # read whole, once.
    if chunk is None:
        # On a GPU, cache-sized chunks would be all kernel launches: take large ones.
        per_matrix = WORK_ENTRIES if dev.type == "cpu" else GPU_WORK_ENTRIES
        chunk = _whole_words(min(per_matrix // n, memory_budget // (2 * WORK_BYTES_PER_ENTRY * n)))
    stats = AllPairsStats(n, device=dev, chunk=chunk, topk_sample=topk_sample, topk_margin=topk_margin)
    work_bytes = WORK_BYTES_PER_ENTRY * n * chunk
    bytes_read = 0
    in_parts = 0
    # Every operation is on one cache-sized chunk: intra-op threads cost more in hand-offs
    # than they give (measured ~40x slower with 2 threads on 2 busy cores).
    try:
        with intra_op_threads(1 if dev.type == "cpu" else None):
            names = check_catalog_architecture(base_ck, cks)
            for name in _progress(names, progress, n + 1):
                info = base_ck.tensors[name]
                copies = sum(ck.tensors[name].numel * DTYPE_BYTES[ck.tensors[name].dtype] for ck in all_cks)
                whole = copies + work_bytes <= memory_budget
                try:
                    if whole:
                        held = [ck.tensor(name, dev).reshape(-1) for ck in all_cks]
                        bytes_read += copies

                        def read(start: int, stop: int, held=held):
                            return held[0][start:stop], [t[start:stop] for t in held[1:]]
                    else:
                        in_parts += 1

                        def read(start: int, stop: int, name=name):
                            nonlocal bytes_read
                            parts = [ck.tensor_range(name, start, stop) for ck in all_cks]
                            bytes_read += sum(p.numel() * p.element_size() for p in parts)
                            parts = [p.to(dev) for p in parts]
                            return parts[0], parts[1:]

                    stats.add(name, info.numel, read, in_memory=whole)
                except CheckpointError as e:
                    raise FeatureError(str(e)) from None
                finally:
                    held = None
    finally:
        for ck in all_cks:
            ck.close()
    return CatalogScan(list(cks), stats, bytes_read, in_parts)


def structural_all_pairs(base: str, models: dict[str, str], **kwargs) -> dict[tuple[str, str], dict[str, float]]:
    """Structural features of every ordered pair of `models` ({name: folder}) over `base`;
    keyword arguments as `scan_catalog`."""
    return scan_catalog(base, models, **kwargs).all_pairs()


def _progress(names: list[str], enabled: bool, copies: int) -> Iterable[str]:
    if not enabled:
        return names
    from tqdm import tqdm

    return tqdm(names, desc=f"structural features ({copies} checkpoints)", unit="tensor", leave=False)
