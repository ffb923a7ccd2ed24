"""Tree structures chosen by the coordinator from public information only.

`random_trees` draws, for every internal node, a feature uniformly among the encoded features and a threshold
uniformly among the public bin edges (federation/gbdt/binning.py). Nothing about any record enters the choice: the
number of features and the bins come from the dataset card, and the randomness is the coordinator's. So the
structure is independent of the data and releasing it, or letting a curious coordinator pick it, costs no
privacy: with the structure fixed before the round, a record's only influence on what leaves its lender is
through the noised leaf sums, which are accounted (federation/gbdt/accounting.py). A coordinator that chooses
structures maliciously (say one leaf isolating a value it suspects) gains nothing either: the sensitivity bound
of the leaf sums holds for every structure, since each record falls in exactly one leaf per tree whatever the
splits are. Measured against split choices that spend budget (noisy root-gain candidates, noisy-quantile
thresholds: benchmarks/results/gbdt_tuning.md), totally random trees won on validation data.
"""

from __future__ import annotations

import numpy as np

from federation.gbdt.binning import public_bin_edges
from federation.gbdt.trees import Tree


def random_trees(
    rng: np.random.Generator,
    n_trees: int,
    depth: int,
    n_features: int,
    n_bins: int,
    candidates: np.ndarray | None = None,
) -> list[Tree]:
    """`n_trees` totally random trees of depth `depth` (leaf values 0, to be set from the round's sums).

    `candidates`: draw each node's (feature, threshold) uniformly among these pairs, coded feature * (n_bins - 1) +
    threshold (federation/gbdt/split_candidates.py, from an accounted release); None: every pair."""
    public_bin_edges(n_bins)  # validates n_bins
    if not 1 <= depth <= 16:
        raise ValueError(f"tree depth must be between 1 and 16, got {depth}")
    if candidates is not None and (
        len(candidates) == 0 or np.min(candidates) < 0 or np.max(candidates) >= n_features * (n_bins - 1)
    ):
        raise ValueError(f"split candidates must be a non-empty subset of 0..{n_features * (n_bins - 1) - 1}")
    if n_trees < 1 or n_features < 1:
        raise ValueError(f"need at least one tree and one feature, got {n_trees} trees and {n_features} features")
    nodes = 2**depth - 1
    trees = []
    for _ in range(n_trees):
        if candidates is None:
            features = rng.integers(0, n_features, size=nodes)
            thresholds = rng.integers(0, n_bins - 1, size=nodes)  # right when bin > t: t in 0..n_bins - 2
        else:
            pick = np.asarray(candidates)[rng.integers(0, len(candidates), size=nodes)]
            features, thresholds = pick // (n_bins - 1), pick % (n_bins - 1)
        trees.append(Tree(features.astype(np.int64), thresholds.astype(np.int64), np.zeros(nodes + 1)))
    return trees
