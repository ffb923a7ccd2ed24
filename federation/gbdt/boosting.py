"""The boosting parameters, and an in-process reference of the whole federated DP boosting.

A round: the coordinator draws `trees_per_round` totally random structures (public); every lender computes the
gradients of its own records at the current model, sums them per leaf of every new tree, adds its noise and sends
the sums; the coordinator adds the lenders' sums and sets every leaf to a clipped Newton step. All trees of a round
are fitted to the same residuals (batched boosting, Maddock et al. CCS 2022), so a round is one release per lender.
`simulate` runs that loop in one process: the reference the Flower path must reproduce with noise off, and what the
tests and benchmarks/gbdt_tuning.py train with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from federation.gbdt.leaf_sums import gradients, l2_sensitivity, leaf_sums, noise_share, noised
from federation.gbdt.newton import leaf_values
from federation.gbdt.split_candidates import count_sensitivity, feature_counts, usable_splits
from federation.gbdt.structure import random_trees
from federation.gbdt.trees import Ensemble, Tree


@dataclass(frozen=True)
class GbdtParams:
    """Defaults: the setting benchmarks/results/gbdt_tuning.md chose on Taiwan validation data."""

    n_bins: int = 8
    depth: int = 4
    trees_per_round: int = 5
    rounds: int = 50
    reg_lambda: float = 1.0
    learning_rate: float = 0.1
    leaf_clip: float = 1.0
    noise_multiplier: float = 0.0  # z, relative to the sensitivity sqrt(trees_per_round); 0: no noise
    base_score: float = 0.0  # the starting logit: public (a data-dependent one would cost budget)
    # "all": totally random over every public (feature, threshold); "noisy_quantiles": among the thresholds a noisy
    # count release finds with at least min_fraction of the records on each side (split_candidates.py)
    split_candidates: str = "all"
    min_fraction: float = 0.05
    count_noise_multiplier: float = 0.0  # z of the count release (accounting.split_budget); 0: no noise

    def validated(self) -> GbdtParams:
        if not (self.rounds >= 1 and self.trees_per_round >= 1):
            raise ValueError(f"need rounds >= 1 and trees_per_round >= 1, got {self.rounds} and {self.trees_per_round}")
        if self.split_candidates not in ("all", "noisy_quantiles"):
            raise ValueError(f"split_candidates must be 'all' or 'noisy_quantiles', got {self.split_candidates!r}")
        if not (self.reg_lambda > 0 and self.learning_rate > 0 and self.leaf_clip > 0 and self.noise_multiplier >= 0):
            raise ValueError("reg_lambda, learning_rate and leaf_clip must be > 0 and noise_multiplier >= 0")
        return self


def round_trees(
    rng: np.random.Generator, params: GbdtParams, n_features: int, candidates: np.ndarray | None = None
) -> list[Tree]:
    """The coordinator's structures for one round (the same calls, in the same order, as `simulate` makes)."""
    return random_trees(rng, params.trees_per_round, params.depth, n_features, params.n_bins, candidates)


def lender_sums(trees: list[Tree], Xb: np.ndarray, y: np.ndarray, logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A lender's noise-free [T, L, 2] sums for the round's trees, and its records' leaves [n, T]."""
    idx = np.stack([t.leaf_index(Xb) for t in trees], axis=1) if len(Xb) else np.zeros((0, len(trees)), np.int64)
    g, h = gradients(y, logit)
    return leaf_sums(idx, g, h, trees[0].n_leaves), idx


def set_leaves(trees: list[Tree], total: np.ndarray, params: GbdtParams) -> list[Tree]:
    """The coordinator's step: each tree's leaves from the summed (noisy) [T, L, 2] sums."""
    values = leaf_values(total[..., 0], total[..., 1], params.reg_lambda, params.learning_rate, params.leaf_clip)
    return [t.with_values(v) for t, v in zip(trees, values, strict=True)]


def simulate(
    lenders: list[tuple[np.ndarray, np.ndarray]],
    params: GbdtParams,
    rng: np.random.Generator,
    noise: bool,
    secure_split: bool = False,
    normal: Callable[[int], object] | None = None,
) -> Ensemble:
    """Federated boosting over `lenders` (binned records, labels), in process. `rng` draws only the structures;
    with `noise`, each lender adds N(0, (z S)^2) to its sums (z / sqrt(k) each under `secure_split`; the same for the
    optional count release before round 1, at params.count_noise_multiplier), the normals
    from `normal` (default: a fresh unseeded numpy generator; pass a seeded one for a reproducible benchmark, never
    in a private run)."""
    params = params.validated()
    if not lenders:
        raise ValueError("need at least one lender")
    n_features = lenders[0][0].shape[1]
    if noise and normal is None:
        normal = np.random.default_rng().standard_normal
    z = noise_share(params.noise_multiplier, len(lenders)) if secure_split else params.noise_multiplier
    sensitivity = l2_sensitivity(params.trees_per_round)
    candidates = None
    if params.split_candidates == "noisy_quantiles":
        zc = noise_share(params.count_noise_multiplier, len(lenders)) if secure_split else params.count_noise_multiplier
        counts = np.zeros((n_features, params.n_bins))
        for Xb, _ in lenders:
            own = feature_counts(Xb, params.n_bins)
            counts += noised(own, zc, count_sensitivity(n_features), normal) if noise and normal is not None else own
        candidates = usable_splits(counts, params.min_fraction)
    model = Ensemble(params.base_score, params.learning_rate, n_features, params.n_bins)
    logits = [np.full(len(y), params.base_score) for _, y in lenders]
    for _ in range(params.rounds):
        trees = round_trees(rng, params, n_features, candidates)
        total = np.zeros((len(trees), trees[0].n_leaves, 2))
        leaves = []
        for (Xb, y), logit in zip(lenders, logits, strict=True):
            sums, idx = lender_sums(trees, Xb, y, logit)
            total += noised(sums, z, sensitivity, normal) if noise and normal is not None else sums
            leaves.append(idx)
        trees = set_leaves(trees, total, params)
        values = np.stack([t.values for t in trees])  # [T, L]
        for logit, idx in zip(logits, leaves, strict=True):
            logit += values[np.arange(len(trees)), idx].sum(axis=1)
        model = model.with_trees(trees)
    return model
