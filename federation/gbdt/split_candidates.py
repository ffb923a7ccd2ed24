"""Optional: split thresholds from noisy public quantiles, one accounted release before the boosting.

Totally random thresholds over equal-width bins waste nodes where a feature's records sit in a few bins (a split
that sends every record one way). With `GbdtParams.split_candidates = "noisy_quantiles"` each lender first releases,
once, its count of records per feature and bin plus Gaussian noise; the coordinator keeps, per feature, only the
thresholds with at least `min_fraction` of the noisy total on each side, and draws the random trees among those.
One record adds 1 to one bin of every feature, so the L2 sensitivity of the [F, B] counts is sqrt(F)
(`count_sensitivity`). The release is one more Gaussian event (`accounting.count_event`); `split_budget` gives it a
share of the budget: Gaussian releases compose in the sum of 1 / z^2 (exactly, under RDP and PLD), so the rounds
keep the rest. Measured against totally random trees in benchmarks/results/gbdt_tuning.md.
"""

from __future__ import annotations

import math

import numpy as np


def feature_counts(Xb: np.ndarray, n_bins: int) -> np.ndarray:
    """[F, B] the number of a lender's records in each bin of each feature."""
    Xb = np.asarray(Xb)
    F = Xb.shape[1]
    flat = (Xb.astype(np.int64) + n_bins * np.arange(F)).ravel()
    return np.bincount(flat, minlength=F * n_bins).reshape(F, n_bins).astype(np.float64)


def count_sensitivity(n_features: int) -> float:
    """L2 sensitivity of the [F, B] counts to adding or removing one record: sqrt(F) (one bin per feature)."""
    if n_features < 1:
        raise ValueError(f"need at least one feature, got {n_features}")
    return math.sqrt(n_features)


def usable_splits(noisy_counts: np.ndarray, min_fraction: float) -> np.ndarray:
    """The (feature, threshold) pairs, as feature * (B - 1) + threshold, whose sides each hold at least
    `min_fraction` of the feature's noisy total (negative noisy counts read as 0); all pairs when none qualifies, so a
    tree can always be drawn. Post-processing of the noisy counts: costs nothing more."""
    if not 0 <= min_fraction < 0.5:
        raise ValueError(f"min_fraction must be in [0, 0.5), got {min_fraction}")
    counts = np.maximum(np.asarray(noisy_counts, dtype=np.float64), 0.0)
    left = np.cumsum(counts, axis=1)[:, :-1]
    total = np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    with np.errstate(invalid="ignore"):  # inf / inf (a crafted sum): NaN, which no comparison below keeps
        fraction = left / total
    keep = np.flatnonzero(((fraction >= min_fraction) & (fraction <= 1 - min_fraction)).ravel())
    return keep if len(keep) else np.arange(counts.shape[0] * (counts.shape[1] - 1))
