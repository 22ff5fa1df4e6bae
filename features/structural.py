"""Structural similarity of two fine-tunes, from their weights alone.

For a base θ₀ and models A, B with deltas δ_A = θ_A − θ₀, δ_B = θ_B − θ₀, the three
checkpoints are streamed one tensor at a time; each tensor is cut into chunks whose
statistics go into float64 accumulators, so memory is O(largest tensor), never a whole
model. The definitions (names, formulas, ranges, order-sensitivity) are in
`features/__init__.py`, the one place they are documented.

`DeltaStats` is the math (fed tensors, it returns features) and is independent of files;
`structural_features` is the I/O around it: checking that the three checkpoints share an
architecture, choosing the device, loading tensors and releasing their memory maps.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from features.errors import FeatureError

STRUCTURAL_FEATURES: tuple[str, ...] = (
    "kinship_pcc",
    "kinship_cos",
    "kinship_ed",
    "weight_cos",
    "delta_norm_logratio",
    "sign_agreement",
    "topk_overlap",
    "layer_cos_min",
    "layer_cos_mean",
    "layer_cos_max",
    "attn_cos_min",
    "attn_cos_mean",
    "attn_cos_max",
    "mlp_cos_min",
    "mlp_cos_mean",
    "mlp_cos_max",
)

# Share of entries, per tensor, that TIES-style trimming keeps (the "top 20 %").
TOPK_FRACTION = 0.2
# Chunk length for the elementwise statistics: the float64 buffers (7 rows of 1 MB) stay
# in the CPU cache, so the ~30 small operations per chunk run at cache speed instead of
# each going out to memory (measured 3-4x faster than 2M-entry chunks).
DEFAULT_CHUNK = 1 << 17
# The top-k threshold is bracketed from a sample this large, this many standard deviations wide.
TOPK_SAMPLE = 1 << 16
TOPK_MARGIN = 6.0
_TINY = math.ulp(0.0)  # the smallest positive double

# A transformer block is `<...>.layers.N.` (Llama, Mistral, Qwen), `h.N.` (GPT-2),
# `layer.N.` (BERT), `blocks.N.` / `block.N.` (others).
_BLOCK = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_ATTN = re.compile(r"(?:^|\.)(?:self_attn|attention|attn|self_attention|cross_attn)\.")
_MLP = re.compile(r"(?:^|\.)(?:mlp|feed_forward|ffn|ff)\.")


def block_of(name: str) -> int | None:
    """The transformer block index in a tensor name, or None outside the blocks."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def group_of(name: str) -> str | None:
    """'attn', 'mlp' or None (norms, embeddings, anything the names do not tell apart)."""
    if _ATTN.search(name):
        return "attn"
    if _MLP.search(name):
        return "mlp"
    return None


def safe_cos(ab: float, aa: float, bb: float) -> float:
    """Cosine from sums of products, with the conventions that keep it defined:
    two zero vectors are identical (1), one zero vector shares no direction (0)."""
    if aa <= 0.0 and bb <= 0.0:
        return 1.0
    if aa <= 0.0 or bb <= 0.0:
        return 0.0
    return min(1.0, max(-1.0, ab / math.sqrt(aa * bb)))


@dataclass
class _Dots:
    """Sums of products of δ_A, δ_B over some set of entries."""

    ab: float = 0.0
    aa: float = 0.0
    bb: float = 0.0

    def add(self, ab: float, aa: float, bb: float) -> None:
        self.ab += ab
        self.aa += aa
        self.bb += bb

    def cos(self) -> float:
        return safe_cos(self.ab, self.aa, self.bb)


@dataclass
class _Bracket:
    """Where the k-th largest |δ| of one tensor lies, from a sample: values above `hi` are
    surely kept, values below `lo` surely not; the band between is settled at the end."""

    k: int
    lo: float
    hi: float
    sure: int = 0  # entries with |δ| > hi


@dataclass
class DeltaStats:
    """Running statistics of (θ₀, θ_A, θ_B), fed one tensor at a time.

    Everything that crosses tensors is a float64 Python number or a small dict of them;
    per-tensor work happens on the tensors' device in float64 chunks small enough to stay
    in the CPU cache, which is what makes the pass run near the speed of reading.
    """

    chunk: int = DEFAULT_CHUNK
    topk_fraction: float = TOPK_FRACTION
    # The top-k threshold is bracketed from a sample of this many entries, `topk_margin`
    # standard deviations of the sample quantile wide; tensors up to 4× the sample are
    # thresholded exactly up front. A bracket that misses costs a second pass, never accuracy.
    topk_sample: int = TOPK_SAMPLE
    topk_margin: float = TOPK_MARGIN
    # Pearson via Chan et al.'s pairwise merge of (count, mean, co-moment): exact in the
    # streaming order and free of the cancellation that raw sums of squares suffer when the
    # deltas have a common offset.
    n: int = 0
    mean_a: float = 0.0
    mean_b: float = 0.0
    c_aa: float = 0.0
    c_bb: float = 0.0
    c_ab: float = 0.0
    delta: _Dots = field(default_factory=_Dots)
    weight: _Dots = field(default_factory=_Dots)  # the same sums for θ_A, θ_B
    sign_agree: int = 0
    sign_disagree: int = 0
    topk_weighted: float = 0.0
    topk_weight: int = 0
    topk_second_passes: int = 0
    blocks: dict[int, _Dots] = field(default_factory=dict)
    groups: dict[tuple[int, str], _Dots] = field(default_factory=dict)
    _buffers: object = None

    @property
    def diff_sq(self) -> float:
        """‖δ_A − δ_B‖²; exactly 0 for identical deltas (the dot products are then equal)."""
        return max(0.0, self.delta.aa + self.delta.bb - 2.0 * self.delta.ab)

    # -- feeding -------------------------------------------------------------------------
    def add(self, name: str, base, a, b) -> None:
        """Add one tensor of each model (same shape, any float dtype, one device)."""
        import torch

        base, a, b = base.reshape(-1), a.reshape(-1), b.reshape(-1)
        numel = base.numel()
        if numel == 0:
            return
        k = min(numel, max(1, math.ceil(self.topk_fraction * numel)))
        brackets = [self._bracket(x, base, k) for x in (a, b)]
        # Zero entries are never kept, so never open either: the lower bound is at least the
        # smallest positive double.
        lo = torch.tensor([[max(br.lo, _TINY)] for br in brackets], dtype=torch.float64, device=base.device)
        hi = torch.tensor([[br.hi] for br in brackets], dtype=torch.float64, device=base.device)
        z, tmp, mags = self._scratch(min(numel, self.chunk), base.device)
        tensor_dots = _Dots()
        inter_sure = 0
        undecided = []
        for start in range(0, numel, self.chunk):
            stop = min(start + self.chunk, numel)
            m = stop - start
            rows, t = z[:, :m], tmp[:m]
            da, db, ta, tb = rows[0], rows[1], rows[2], rows[3]
            ta.copy_(a[start:stop])
            tb.copy_(b[start:stop])
            t.copy_(base[start:stop])
            torch.sub(ta, t, out=da)
            torch.sub(tb, t, out=db)
            # torch.dot, not one Gram product: equal inputs then give bitwise-equal sums, so
            # identical deltas come out exactly identical.
            dots = torch.stack([torch.dot(da, db), torch.dot(da, da), torch.dot(db, db),
                                torch.dot(ta, tb), torch.dot(ta, ta), torch.dot(tb, tb)])
            sums = rows[:2].sum(dim=1)
            torch.mul(da, db, out=t)
            agree = torch.count_nonzero(t > 0)
            signed = torch.count_nonzero(t)
            sure, inter = self._topk_chunk(rows[:2], mags[:, :m], lo, hi, undecided)
            # One transfer of every number this chunk produced (a single sync on a GPU).
            counts = torch.cat([torch.stack([agree, signed, inter]), sure]).to(dots.dtype)
            vals = torch.cat([dots, sums, counts]).tolist()
            ab, aa, bb, wab, waa, wbb, sa, sb, agree, signed, inter, sure_a, sure_b = vals

            self._merge_moments(m, sa, sb, aa, bb, ab)
            tensor_dots.add(ab, aa, bb)
            self.weight.add(wab, waa, wbb)
            self.sign_agree += int(agree)
            self.sign_disagree += int(signed - agree)
            inter_sure += int(inter)
            brackets[0].sure += int(sure_a)
            brackets[1].sure += int(sure_b)

        self.delta.add(tensor_dots.ab, tensor_dots.aa, tensor_dots.bb)
        blk = block_of(name)
        if blk is not None:
            self.blocks.setdefault(blk, _Dots()).add(tensor_dots.ab, tensor_dots.aa, tensor_dots.bb)
            grp = group_of(name)
            if grp is not None:
                self.groups.setdefault((blk, grp), _Dots()).add(tensor_dots.ab, tensor_dots.aa, tensor_dots.bb)
        self._settle_topk(base, a, b, brackets, inter_sure, undecided)

    def _scratch(self, m: int, device):
        """Float64 work buffers, allocated once for the largest chunk seen."""
        import torch

        buf = self._buffers
        if buf is None or buf[1].numel() < m or buf[1].device != device:
            buf = (torch.empty(4, m, dtype=torch.float64, device=device),
                   torch.empty(m, dtype=torch.float64, device=device),
                   torch.empty(2, m, dtype=torch.float64, device=device))
            self._buffers = buf
        return buf

    def _merge_moments(self, m: int, sa: float, sb: float, saa: float, sbb: float, sab: float) -> None:
        ma, mb = sa / m, sb / m
        caa, cbb, cab = saa - sa * ma, sbb - sb * mb, sab - sa * mb
        n = self.n
        total = n + m
        da, db = ma - self.mean_a, mb - self.mean_b
        w = n * m / total
        self.c_aa += caa + da * da * w
        self.c_bb += cbb + db * db * w
        self.c_ab += cab + da * db * w
        self.mean_a += da * m / total
        self.mean_b += db * m / total
        self.n = total

    # -- top-k overlap ---------------------------------------------------------------------
    # Masks M = {|δ| >= k-th largest |δ|, δ != 0} per tensor, k = ⌈fraction·n⌉ (ties at the
    # threshold all count). The threshold is never found by sorting the tensor: a sample
    # brackets it, the chunk pass counts what is surely in and keeps the few entries inside
    # the bracket, and the exact threshold is then selected among those.
    def _bracket(self, x, base, k: int) -> _Bracket:
        import torch

        numel = base.numel()
        if numel <= 4 * self.topk_sample:
            mag = (x.to(torch.float64) - base.to(torch.float64)).abs_()
            thr = float(torch.kthvalue(mag, numel - k + 1).values)
            return _Bracket(k, thr, thr)
        gen = torch.Generator(device="cpu").manual_seed(numel)
        s = self.topk_sample
        # Stratified: one random entry in each of s equal strides. Seeded, so runs agree;
        # ascending, so the reads walk each file forward; and no stride pattern of a weight
        # matrix (a column, a head) can dominate the sample.
        step = numel // s
        idx = (torch.arange(s) * step + torch.randint(step, (s,), generator=gen)).to(base.device)
        mag = (x[idx].to(torch.float64) - base[idx].to(torch.float64)).abs_()
        p = k / numel
        centre = s * (1.0 - p)
        margin = self.topk_margin * math.sqrt(s * p * (1.0 - p)) + 1.0
        lo_rank = min(s, max(1, math.floor(centre - margin)))
        hi_rank = min(s, max(1, math.ceil(centre + margin)))
        lo = float(torch.kthvalue(mag, lo_rank).values)
        hi = float(torch.kthvalue(mag, hi_rank).values)
        return _Bracket(k, lo, hi)

    @staticmethod
    def _topk_chunk(deltas, mags, lo, hi, undecided: list):
        """Count the entries surely kept by each mask and by both; keep (|δ_A|, |δ_B|) of the
        entries that either bracket leaves open. Both models go through each operation
        together (2-row tensors against (2, 1) bounds): half the calls per chunk."""
        import torch

        torch.abs(deltas, out=mags)
        sure = mags > hi
        band = mags >= lo
        band ^= sure
        inter = torch.count_nonzero(sure[0] & sure[1])
        # Appended even when empty: testing first would cost another scan of the chunk.
        undecided.append(mags[:, band[0] | band[1]])  # indexing copies
        return torch.count_nonzero(sure, dim=1), inter

    def _settle_topk(self, base, a, b, brackets: list[_Bracket], inter_sure: int, undecided: list) -> None:
        import torch

        numel = base.numel()
        values = torch.cat(undecided, dim=1) if undecided else torch.empty(2, 0, dtype=torch.float64, device=base.device)
        thresholds = []
        for row, br in zip(values, brackets):
            in_band = (row >= br.lo) & (row <= br.hi) & (row > 0)
            band = row[in_band]
            need = br.k - br.sure
            if 0 < need <= band.numel():
                thresholds.append(float(torch.kthvalue(band, band.numel() - need + 1).values))
            elif need > band.numel() and br.lo <= 0:
                thresholds.append(0.0)  # fewer than k non-zero entries: all of them are kept
            else:
                thresholds.append(None)  # the sample's bracket missed
        if None in thresholds:
            self.topk_second_passes += 1
            inter, count_a, count_b = self._topk_exact(base, a, b)
        else:
            kept = [(row >= thr) & (row > 0) for row, thr in zip(values, thresholds)]
            inter = inter_sure + int(torch.count_nonzero(kept[0] & kept[1]))
            count_a = brackets[0].sure + int(torch.count_nonzero(kept[0] & (values[0] <= brackets[0].hi)))
            count_b = brackets[1].sure + int(torch.count_nonzero(kept[1] & (values[1] <= brackets[1].hi)))
        union = count_a + count_b - inter
        if union:
            # Weighted by tensor size; a tensor neither model changed says nothing about
            # collisions and is left out.
            self.topk_weighted += numel * inter / union
            self.topk_weight += numel

    def _topk_exact(self, base, a, b) -> tuple[int, int, int]:
        """The same counts by exact selection on the whole tensor (float64 |δ|): the
        fallback when a bracket missed, at the cost of a whole-tensor temporary."""
        import torch

        numel = base.numel()
        k = min(numel, max(1, math.ceil(self.topk_fraction * numel)))
        masks = []
        for x in (a, b):
            mag = (x.to(torch.float64) - base.to(torch.float64)).abs_()
            thr = torch.kthvalue(mag, numel - k + 1).values
            masks.append((mag >= thr) & (mag > 0))
            del mag
        inter = int(torch.count_nonzero(masks[0] & masks[1]))
        return inter, int(torch.count_nonzero(masks[0])), int(torch.count_nonzero(masks[1]))

    # -- results -------------------------------------------------------------------------
    def features(self) -> dict[str, float]:
        d = self.delta
        both_zero = d.aa <= 0.0 and d.bb <= 0.0
        if self.c_aa > 0.0 and self.c_bb > 0.0:
            pcc = min(1.0, max(-1.0, self.c_ab / math.sqrt(self.c_aa * self.c_bb)))
        else:
            # A constant (typically zero) delta has no variance: identical deltas still
            # correlate perfectly, anything else carries no linear relation.
            pcc = 1.0 if self.diff_sq <= 0.0 else 0.0
        norm_a, norm_b = math.sqrt(max(d.aa, 0.0)), math.sqrt(max(d.bb, 0.0))
        ed = 0.0 if both_zero else min(1.0, math.sqrt(max(self.diff_sq, 0.0)) / (norm_a + norm_b))
        # tanh(log(‖δ_A‖/‖δ_B‖)) written as (‖δ_A‖² − ‖δ_B‖²)/(‖δ_A‖² + ‖δ_B‖²): the same
        # number, but defined (±1) when one delta is zero.
        logratio = 0.0 if both_zero else (d.aa - d.bb) / (d.aa + d.bb)
        signed = self.sign_agree + self.sign_disagree
        if signed:
            sign = self.sign_agree / signed
        else:
            # No entry changed in both: identical (all-zero) deltas agree, otherwise there is
            # no evidence either way and the value is chance level.
            sign = 1.0 if self.diff_sq <= 0.0 else 0.5
        topk = self.topk_weighted / self.topk_weight if self.topk_weight else 1.0
        kinship_cos = d.cos()

        out = {
            "kinship_pcc": pcc,
            "kinship_cos": kinship_cos,
            "kinship_ed": ed,
            "weight_cos": self.weight.cos(),
            "delta_norm_logratio": logratio,
            "sign_agreement": sign,
            "topk_overlap": topk,
        }
        layer = _spread([dots.cos() for dots in self.blocks.values()], fallback=(kinship_cos,) * 3)
        out.update(zip(("layer_cos_min", "layer_cos_mean", "layer_cos_max"), layer))
        for grp in ("attn", "mlp"):
            cosines = [dots.cos() for (_, g), dots in self.groups.items() if g == grp]
            out.update(zip((f"{grp}_cos_min", f"{grp}_cos_mean", f"{grp}_cos_max"), _spread(cosines, fallback=layer)))
        return {name: float(out[name]) for name in STRUCTURAL_FEATURES}


def _spread(values: list[float], fallback: tuple[float, float, float]) -> tuple[float, float, float]:
    """(min, mean, max); when the names gave no such group, the next coarser level's values."""
    if not values:
        return fallback
    return min(values), sum(values) / len(values), max(values)


def compared_tensors(base, models) -> list[str]:
    """The float tensors to compare, in the base's order: merging's one architecture check
    (names, shapes, kinds; an lm_head a tied config leaves out is fine) as a FeatureError,
    then the tensors every checkpoint holds."""
    from merging.architecture import check_same_architecture
    from merging.errors import CheckpointError

    try:
        names = check_same_architecture(base, list(models))
    except CheckpointError as e:
        raise FeatureError(str(e)) from None
    names = [n for n in names if all(n in ck.tensors for ck in models)]
    if not names:
        raise FeatureError(f"{base.path}: no floating-point tensors to compare")
    return names


def structural_features(base: str, a: str, b: str, *, device: str = "auto", progress: bool = False,
                        chunk: int = DEFAULT_CHUNK, topk_sample: int = TOPK_SAMPLE,
                        topk_margin: float = TOPK_MARGIN) -> dict[str, float]:
    """Structural features of the ordered pair (A, B) over `base`; see `features` for the list.

    `chunk`, `topk_sample` and `topk_margin` (see DeltaStats) change speed, never results.
    """
    from merging.checkpoint import Checkpoint
    from merging.device import intra_op_threads, resolve_device
    from merging.errors import CheckpointError, MergeError

    try:
        dev = resolve_device(device)
        cks = [Checkpoint(p) for p in (base, a, b)]
    except MergeError as e:
        raise FeatureError(str(e)) from None
    # Every operation here is small (one cache-sized chunk); intra-op threads cost more
    # in hand-offs than they give, and much more when other processes share the cores.
    try:
        with intra_op_threads(1 if dev.type == "cpu" else None):
            names = compared_tensors(cks[0], cks[1:])
            stats = DeltaStats(chunk=chunk, topk_sample=topk_sample, topk_margin=topk_margin)
            for name in _progress(names, progress):
                try:
                    tensors = [ck.tensor(name, dev) for ck in cks]
                except CheckpointError as e:
                    raise FeatureError(str(e)) from None
                stats.add(name, *tensors)
                del tensors
            return stats.features()
    finally:
        for ck in cks:
            ck.close()


def _progress(names: list[str], enabled: bool) -> Iterable[str]:
    if not enabled:
        return names
    from tqdm import tqdm

    return tqdm(names, desc="structural features", unit="tensor", leave=False)
