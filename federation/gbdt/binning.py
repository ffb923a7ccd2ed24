"""Public bins over the encoded feature range: the split candidates of every tree.

The encoding (federation/encoding.py) maps every numeric column into [-1, 1] with the card's public bounds and
every one-hot column into {0, 1}, so equal-width bins over [-1, 1] are fixed before any record is seen: choosing
them costs no privacy. A one-hot value 1 lands in the last bin and 0 in a lower one, so every threshold splits a
one-hot column the same way.
"""

from __future__ import annotations

import numpy as np

MAX_BINS = 256  # bins are stored as uint8


def public_bin_edges(n_bins: int) -> np.ndarray:
    """The n_bins + 1 edges of equal-width bins over [-1, 1] (data-independent)."""
    if not 2 <= int(n_bins) <= MAX_BINS:
        raise ValueError(f"n_bins must be between 2 and {MAX_BINS}, got {n_bins}")
    return np.linspace(-1.0, 1.0, int(n_bins) + 1)


def bin_features(X: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index (0 .. n_bins - 1) of every encoded value; bin b holds (edge_b, edge_b+1], the first bin holds -1.

    Values outside [-1, 1] (the encoding clips, so only a caller's own data) go to the first or last bin; NaN is
    refused (the encoding never produces it). 0 and 1 (one-hot) always fall in different bins: 1 is in the last
    bin, (1 - 2 / n_bins, 1], and 0 is not, for every n_bins >= 2 (with bins closed on the left instead, 0 and 1
    would share the last bin of 2)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"features must be a 2-D array [records, features], got shape {X.shape}")
    if np.isnan(X).any():
        raise ValueError("features contain NaN; encode them with the card first")
    interior = public_bin_edges(n_bins)[1:-1]
    return np.searchsorted(interior, X, side="left").astype(np.uint8)
