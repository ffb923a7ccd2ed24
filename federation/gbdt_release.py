"""What a lender releases in a gbdt round, and the privacy event that describes it.

A round asks each lender for the gradient and hessian sums, per leaf, of the round's new trees (their structure
is the coordinator's, public), at the current ensemble's logits. Adding or removing one record changes one leaf of
each of the k trees by (g, h) with |g| <= 1 and 0 <= h <= 1/4 (the logistic loss bounds them: no clipping), so the
release is one Gaussian mechanism of L2 sensitivity federation.gbdt.leaf_sums.l2_sensitivity(k), over every
record (no subsampling): PrivacyEvent(noise multiplier z, sample rate 1, 1 step, clip norm = that sensitivity).
The noise is the lender's own (its CSPRNG, federation/privacy/noise.py). The bound holds for any structure and any
leaf values the coordinator sends, since g and h are bounded at every logit; a structure chosen from earlier noisy
releases is post-processing of them.

With noisy-quantile split candidates (`--gbdt-split-candidates noisy_quantiles`) round 1 releases instead each
lender's record counts per feature and public bin (federation/gbdt/split_candidates.py), scaled by S / sqrt(F) (S the
run's release sensitivity, F the encoded features): one record is in one bin of every feature, so it moves F counts
by S / sqrt(F) each, an L2 change of exactly S. The count release is thus the same kind of event as a leaf-sum round
(sensitivity S, rate 1, one step), at its own noise multiplier: it takes `gbdt_count_share` of the budget
(federation.gbdt.accounting.split_budget). The coordinator divides the sum by the scale (post-processing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from federation.config import RunConfig
from federation.gbdt import accounting
from federation.gbdt.binning import bin_features
from federation.gbdt.leaf_sums import gradients, l2_sensitivity, leaf_sums, noised
from federation.gbdt.split_candidates import feature_counts, usable_splits
from federation.gbdt.trees import Ensemble
from federation.privacy.events import PrivacyEvent
from federation.tree_model import count_rounds, ensemble_of, is_count_round, round_trees, tree_rounds

LEAF_SUMS = "leaf_sums"  # the one array of a gbdt training reply: [trees this round, leaves, (G, H)]
COUNTS = "counts"  # the one array of a count round's reply: [features, bins], scaled (`count_scale`)


def release_clip_norm(cfg: RunConfig) -> float:
    """The L2 sensitivity a release of the run is accounted at (its event's clip norm), which the lender's
    `max_clip_norm` bounds: the clip norm for DP-SGD, the leaf sums' sensitivity for gbdt."""
    return float(l2_sensitivity(cfg.gbdt_trees_per_round)) if cfg.model == "gbdt" else cfg.clip_norm


def leaf_sums_shape(cfg: RunConfig) -> tuple[int, int, int]:
    return (cfg.gbdt_trees_per_round, 2**cfg.gbdt_depth, 2)


def reply_name_and_shape(cfg: RunConfig, rnd: int, n_features: int) -> tuple[str, tuple[int, ...]]:
    """The one array a gbdt reply of round `rnd` holds: the counts in a count round, else the leaf sums."""
    if is_count_round(cfg, rnd):
        return COUNTS, (n_features, cfg.gbdt_bins)
    return LEAF_SUMS, leaf_sums_shape(cfg)


def calibrated_noise(cfg: RunConfig, budget: float, delta: float) -> float:
    """The noise multiplier of a leaf-sum round that spends `budget` over the run's releases (one unsampled
    release each; with a count round, what the count release leaves)."""
    return calibrated_noises(cfg, budget, delta)[1]


def calibrated_noises(cfg: RunConfig, budget: float, delta: float) -> tuple[float | None, float]:
    """(noise multiplier of the count release, or None without one; that of every leaf-sum round). A fixed
    --noise-multiplier is used for both."""
    if cfg.noise_multiplier:
        return (cfg.noise_multiplier if count_rounds(cfg) else None), cfg.noise_multiplier
    if not count_rounds(cfg):
        return None, accounting.calibrate_noise(budget, delta, cfg.rounds, cfg.accountant)
    return accounting.split_budget(budget, delta, tree_rounds(cfg), cfg.gbdt_count_share, cfg.accountant)


def count_scale(cfg: RunConfig, n_features: int) -> float:
    """What each count is multiplied by before it is released: S / sqrt(F), so that one record's L2 sensitivity is
    the run's release sensitivity S (module docstring)."""
    return release_clip_norm(cfg) / math.sqrt(n_features)


def exact_counts(cfg: RunConfig, x: np.ndarray) -> np.ndarray:
    """[F, B] the lender's records per feature and public bin, times `count_scale`. No noise: `released` adds it."""
    return feature_counts(bin_features(x, cfg.gbdt_bins), cfg.gbdt_bins) * count_scale(cfg, x.shape[1])


def split_candidates(cfg: RunConfig, summed: np.ndarray | None, n_features: int) -> np.ndarray | None:
    """The (feature, threshold) pairs, coded feature * (bins - 1) + threshold, that the trees of a noisy-quantile run
    draw from: those `usable_splits` finds in the summed (noisy, scaled) counts. None (every pair) in a run without
    a count round, or when its count round aggregated nothing."""
    if not count_rounds(cfg) or summed is None:
        return None
    with np.errstate(over="ignore"):  # a crafted sum near the float64 limit: inf, read as usable_splits reads it
        counts = np.asarray(summed, dtype=np.float64) / count_scale(cfg, n_features)
    return usable_splits(counts, cfg.gbdt_min_fraction)


def round_event(cfg: RunConfig, lender: int, rnd: int, sigma: float) -> PrivacyEvent:
    return accounting.round_event(lender, rnd, sigma, cfg.gbdt_trees_per_round)


def exact_leaf_sums(
    cfg: RunConfig, arrays: Mapping[str, np.ndarray], n_features: int, rnd: int, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """[k, 2**d, 2] gradient and hessian sums over the records (x encoded, y in {0, 1}) per leaf of round `rnd`'s
    trees, at the logits of the trees grown so far. No noise: `released` adds it."""
    binned = bin_features(x, cfg.gbdt_bins)
    g, h = gradients(np.asarray(y, dtype=np.float64), current_logit(cfg, arrays, n_features, binned))
    leaves = _round_ensemble(cfg, arrays, n_features, rnd).leaf_index(binned)
    return np.asarray(leaf_sums(leaves, g, h, 2**cfg.gbdt_depth), dtype=np.float64)


def current_logit(cfg: RunConfig, arrays: Mapping[str, np.ndarray], n_features: int, binned: np.ndarray) -> np.ndarray:
    """The logit of the grown trees, summed round by round (base, then each round's trees together) in the order
    federation.gbdt.boosting.simulate keeps its logits, so that a noise-free run reproduces it to the bit."""
    grown = ensemble_of(arrays, n_features, cfg.gbdt_bins, cfg.gbdt_learning_rate)
    k = cfg.gbdt_trees_per_round
    logit = np.full(len(binned), grown.base_score)
    for first in range(0, len(grown.trees), k):
        trees = grown.trees[first : first + k]
        idx = np.stack([t.leaf_index(binned) for t in trees], axis=1)
        logit += np.stack([t.values for t in trees])[np.arange(len(trees)), idx].sum(axis=1)
    return logit


def _round_ensemble(cfg: RunConfig, arrays: Mapping[str, np.ndarray], n_features: int, rnd: int) -> Ensemble:
    rows = round_trees(cfg, rnd)
    mine = {**arrays, **{name: arrays[name][rows] for name in ("features", "thresholds", "values")}}
    return ensemble_of(mine, n_features, cfg.gbdt_bins, cfg.gbdt_learning_rate, trees=cfg.gbdt_trees_per_round)


def released(
    cfg: RunConfig, sums: np.ndarray, noise_multiplier: float | None, normal: Callable[[int], np.ndarray]
) -> np.ndarray:
    """The leaf sums as they leave the lender: plus N(0, (z S)^2) per entry, S the sensitivity; unchanged without
    DP (noise_multiplier None)."""
    if noise_multiplier is None:
        return sums
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"a DP release needs a positive noise multiplier, got {noise_multiplier}")
    return np.asarray(noised(sums, noise_multiplier, release_clip_norm(cfg), normal), dtype=np.float64)
