"""Similarity signals between two fine-tunes A and B of one base model: the bandit's context.

One entry point, `compute_features(base, a, b, probes)`, returns `{name: float}` for the
ordered pair (A, B). Every value is bounded by construction, so a posterior fitted on
them stays valid as data arrives (DESIGN.md). The set has a name and a version; the
version changes whenever a definition below changes, and belongs in every cache key
together with the checkpoints' fingerprints and `probe_hash(probes)`.

Notation: δ_A = θ_A − θ₀ and δ_B = θ_B − θ₀ over every floating-point tensor, flattened
and concatenated; "swaps" means the value under (B, A) is that of another feature under
(A, B); "flips" means it changes sign.

Structural (from weights; streamed, float64 accumulators):

| name | definition | range | A↔B |
|---|---|---|---|
| kinship_pcc | Pearson correlation of δ_A, δ_B | [-1, 1] | symmetric |
| kinship_cos | ⟨δ_A, δ_B⟩ / (‖δ_A‖‖δ_B‖) | [-1, 1] | symmetric |
| kinship_ed | ‖δ_A − δ_B‖ / (‖δ_A‖ + ‖δ_B‖) | [0, 1] | symmetric |
| weight_cos | ⟨θ_A, θ_B⟩ / (‖θ_A‖‖θ_B‖) | [-1, 1] | symmetric |
| delta_norm_logratio | tanh(log(‖δ_A‖ / ‖δ_B‖)) = (‖δ_A‖² − ‖δ_B‖²) / (‖δ_A‖² + ‖δ_B‖²) | [-1, 1] | flips |
| sign_agreement | #{δ_A·δ_B > 0} / #{δ_A ≠ 0 and δ_B ≠ 0}: among entries both models changed, the share changed in the same direction | [0, 1] | symmetric |
| topk_overlap | per tensor, Jaccard #(M_A ∩ M_B) / #(M_A ∪ M_B) of the masks M = {|δ| ≥ k-th largest |δ|, δ ≠ 0}, k = ⌈0.2·n⌉ (ties at the threshold included); averaged weighted by tensor size over tensors either model changed | [0, 1] | symmetric |
| layer_cos_min / _mean / _max | cosine of δ_A, δ_B within each transformer block (names `layers.N.`, `h.N.`, `layer.N.`, `blocks.N.`, `block.N.`), then min / mean / max over blocks | [-1, 1] | symmetric |
| attn_cos_min / _mean / _max | the same within each block's attention tensors (`self_attn.`, `attention.`, `attn.`) | [-1, 1] | symmetric |
| mlp_cos_min / _mean / _max | the same within each block's MLP tensors (`mlp.`, `feed_forward.`, `ffn.`) | [-1, 1] | symmetric |

Conventions that keep them defined: a zero delta (a model equal to the base) has cosine
and Pearson 0 with anything, except another zero delta, with which it is identical (1;
kinship_ed 0, delta_norm_logratio 0); with no entry changed by both models
sign_agreement is 0.5 (chance), or 1 when both deltas are zero; topk_overlap is 1 when
neither model changed anything. When the names show no blocks, the layer_cos_* are
kinship_cos; when they show no attention (MLP) tensors, attn_cos_* (mlp_cos_*) are the
layer_cos_*. Non-floating tensors (integer buffers) are skipped.

Functional (from probe texts, cut to 128 tokens; every non-pad position of every text
counts; natural logarithms; models in float32 on the CPU, their stored dtype elsewhere):

| name | definition | range | A↔B |
|---|---|---|---|
| kl_mean / kl_median / kl_p90 | 1 − exp(−x) for x the mean / median / 90th percentile over positions of KL(p_A ‖ p_B) of the next-token distributions | [0, 1) | asymmetric |
| js_mean | mean Jensen–Shannon divergence of p_A, p_B, divided by ln 2 | [0, 1] | symmetric |
| top1_agreement | share of positions where argmax p_A = argmax p_B | [0, 1] | symmetric |
| entropy_gap | tanh(mean H(p_A) − mean H(p_B)) | (-1, 1) | flips |
| hidden_cos_mean / _min | per hidden state l = 1..L as transformers returns them (block outputs, the last one after the final norm), the mean over positions of cos(h_A, h_B); then mean / min over l | [-1, 1] | symmetric |
| hidden_cos_last | the same for the last hidden state (after the final norm) | [-1, 1] | symmetric |
| cka_last | linear CKA of the last hidden states (positions × hidden, centred over positions) | [0, 1] | symmetric |
| kl_base_a / kl_base_b | 1 − exp(−mean KL(p_A ‖ p_base)) / the same for B | [0, 1) | swap |

The embedding lookup (hidden state 0) is left out of hidden_cos_*: it is a fact about
weights, which the structural features already cover.
"""
from __future__ import annotations

from features.errors import FeatureError
from features.functional import FUNCTIONAL_FEATURES, probe_hash
from features.structural import STRUCTURAL_FEATURES

FEATURE_SET = "simmerge-sim"
# Bump whenever a definition above (or TOPK_FRACTION, MAX_TOKENS, the generic probes) changes:
# cached vectors of another version are then never reused.
FEATURE_VERSION = 1
FEATURE_NAMES: tuple[str, ...] = STRUCTURAL_FEATURES + FUNCTIONAL_FEATURES

__all__ = [
    "FEATURE_NAMES", "FEATURE_SET", "FEATURE_VERSION", "FUNCTIONAL_FEATURES", "STRUCTURAL_FEATURES",
    "FeatureError", "compute_all_pairs", "compute_features", "compute_features_both_orders", "feature_names",
    "probe_hash",
]


def feature_names(*, structural_only: bool = False) -> tuple[str, ...]:
    """The names `compute_features` returns, in order: the schema a policy stores."""
    return STRUCTURAL_FEATURES if structural_only else FEATURE_NAMES


def compute_features(base: str, a: str, b: str, probes: list[str] | None = None, *,
                     structural_only: bool = False, device: str = "auto", progress: bool = False,
                     tokenizer: str | None = None) -> dict[str, float]:
    """Similarity features of the ordered pair (A, B), fine-tunes of `base` (checkpoint folders).

    `probes`: texts for the functional features (None: the built-in generic set).
    `tokenizer`: a folder to take the tokenizer from (default: the first of base, A, B that
    has one). Returns `{name: float}` in `feature_names(structural_only=...)` order.
    Raises FeatureError for anything the caller can fix (mismatched architectures, a
    missing tokenizer, an unreadable checkpoint, an unavailable device).
    """
    from features.functional import functional_features
    from features.structural import structural_features

    out = structural_features(base, a, b, device=device, progress=progress)
    if not structural_only:
        out.update(functional_features(base, a, b, probes, device=device, tokenizer=tokenizer, progress=progress))
    return out


def compute_features_both_orders(base: str, a: str, b: str, probes: list[str] | None = None, *,
                                 structural_only: bool = False, device: str = "auto", progress: bool = False,
                                 tokenizer: str | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """`compute_features` for (A, B) and for (B, A) at the cost of one pair: the same passes
    over the weights and the probes give both (see `features.order`)."""
    from features.functional import functional_features
    from features.order import reverse
    from features.structural import structural_features

    ab = structural_features(base, a, b, device=device, progress=progress)
    ba = reverse(ab)
    if not structural_only:
        f_ab, f_ba = functional_features(base, a, b, probes, device=device, tokenizer=tokenizer,
                                         progress=progress, both_orders=True)
        ab.update(f_ab)
        ba.update(f_ba)
    return ab, ba


def compute_all_pairs(base: str, models: dict[str, str], probes: list[str] | None = None, *,
                      structural_only: bool = False, device: str = "auto", memory_budget: int | None = None,
                      progress: bool = False, tokenizer: str | None = None, cache=None,
                      fingerprints: dict[str, str] | None = None) -> dict[tuple[str, str], dict[str, float]]:
    """Features of every ordered pair of `models` ({name: checkpoint folder}, fine-tunes of
    `base`): `{(a, b): {name: float}}` in `feature_names(structural_only=...)` order, equal to
    `compute_features(base, models[a], models[b], ...)` for each pair.

    The cost grows with the number of models, not of pairs: the weights are read once per
    checkpoint (`features.structural_all`; `memory_budget` bytes bound what one tensor's N+1
    copies may take, default 1 GiB) and each model is run once on the probes, its outputs
    kept in the probe-output cache (`cache`: a `features.probe_outputs.ProbeOutputCache`,
    default under $SIMMERGE_HOME), so a second call runs no model at all.
    """
    from features.structural_all import DEFAULT_MEMORY_BUDGET, scan_catalog

    scan = scan_catalog(base, models, device=device, progress=progress,
                        memory_budget=memory_budget or DEFAULT_MEMORY_BUDGET)
    pairs = scan.all_pairs()
    if not structural_only:
        from features.functional_all import functional_all_pairs

        functional = functional_all_pairs(base, models, probes, device=device, tokenizer=tokenizer, cache=cache,
                                          fingerprints=fingerprints, progress=progress)
        for key, values in pairs.items():
            values.update(functional.pairs[key])
    return pairs
