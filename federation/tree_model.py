"""The gbdt ensemble as a run's model: fixed-shape arrays in a torch module, so it travels, is hashed, saved
(model.pt), checkpointed, scored by the lenders and by the scorecard exactly as the other models are.

A run of R rounds of k trees of depth d holds R k trees from the start (R - 1 rounds of them when round 1 is the
count release of noisy-quantile split candidates, `count_round`): each tree's split features and bin
thresholds ([R k, 2**d - 1], whole numbers) and leaf values ([R k, 2**d]), plus the base score and how many trees
are grown so far. A tree not yet grown has leaf values 0 and adds nothing to the logit; the coordinator fills in the
structure of a round's trees when it asks for their leaf sums (server/gbdt_strategy.py) and their leaf values when
it has summed them. The logit itself is federation.gbdt's Ensemble over the grown trees, on the public bins of the
encoded records: this module only carries it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from federation.config import RunConfig
from federation.gbdt.binning import bin_features
from federation.gbdt.boosting import GbdtParams
from federation.gbdt.trees import FORMAT, Ensemble


def gbdt_params(cfg: RunConfig, noise_multiplier: float = 0.0) -> GbdtParams:
    """The run's boosting as federation.gbdt's parameters (for its in-process reference and the benchmarks)."""
    return GbdtParams(
        n_bins=cfg.gbdt_bins,
        depth=cfg.gbdt_depth,
        trees_per_round=cfg.gbdt_trees_per_round,
        rounds=tree_rounds(cfg),
        reg_lambda=cfg.gbdt_lambda,
        learning_rate=cfg.gbdt_learning_rate,
        leaf_clip=cfg.gbdt_leaf_clip,
        noise_multiplier=noise_multiplier,
        split_candidates=cfg.gbdt_split_candidates,
        min_fraction=cfg.gbdt_min_fraction,
    )


def count_rounds(cfg: RunConfig) -> int:
    """The rounds before the first tree: 1 (the count release) with noisy-quantile split candidates, else 0."""
    return 1 if cfg.model == "gbdt" and cfg.gbdt_split_candidates == "noisy_quantiles" else 0


def is_count_round(cfg: RunConfig, rnd: int) -> bool:
    """Whether round `rnd` releases the record counts (federation/gbdt/split_candidates.py) instead of leaf sums."""
    return rnd <= count_rounds(cfg)


def tree_rounds(cfg: RunConfig) -> int:
    """The rounds that grow trees."""
    return cfg.rounds - count_rounds(cfg)


def tree_count(cfg: RunConfig) -> int:
    """Every tree a run can grow: tree rounds x trees per round."""
    return tree_rounds(cfg) * cfg.gbdt_trees_per_round


def round_trees(cfg: RunConfig, rnd: int) -> slice:
    """The rows of the trees round `rnd` grows (rounds count from 1; a count round grows none: ValueError)."""
    if is_count_round(cfg, rnd):
        raise ValueError(f"round {rnd} is the count release: it grows no trees")
    k, first = cfg.gbdt_trees_per_round, rnd - 1 - count_rounds(cfg)
    return slice(first * k, (first + 1) * k)


class TreeEnsembleModel(nn.Module):
    """The ensemble's arrays as buffers (no parameters: nothing here is trained by gradient descent)."""

    def __init__(self, n_features: int, n_trees: int, depth: int, n_bins: int, learning_rate: float) -> None:
        super().__init__()
        self.n_features, self.n_bins, self.learning_rate = n_features, n_bins, learning_rate
        nodes, leaves = 2**depth - 1, 2**depth
        self.register_buffer("features", torch.zeros(n_trees, nodes, dtype=torch.int64))
        self.register_buffer("thresholds", torch.zeros(n_trees, nodes, dtype=torch.int64))
        self.register_buffer("values", torch.zeros(n_trees, leaves, dtype=torch.float64))
        self.register_buffer("base_score", torch.zeros(1, dtype=torch.float64))
        self.register_buffer("grown", torch.zeros(1, dtype=torch.int64))

    def ensemble(self) -> Ensemble:
        return ensemble_of(
            {k: v.numpy() for k, v in self.state_dict().items()}, self.n_features, self.n_bins, self.learning_rate
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logit of each encoded record (float64)."""
        binned = bin_features(x.detach().cpu().numpy(), self.n_bins)
        return torch.from_numpy(self.ensemble().predict_logit(binned))


def build_tree_model(cfg: RunConfig, n_features: int) -> TreeEnsembleModel:
    return TreeEnsembleModel(n_features, tree_count(cfg), cfg.gbdt_depth, cfg.gbdt_bins, cfg.gbdt_learning_rate)


def tree_model_of(cfg: RunConfig, ensemble: Ensemble) -> TreeEnsembleModel:
    """The run's model holding `ensemble` (at most the run's number of trees): e.g. a pooled, noise-free one."""
    model = build_tree_model(cfg, ensemble.n_features)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, tree in enumerate(ensemble.trees):
        state["features"][i] = torch.as_tensor(tree.features)
        state["thresholds"][i] = torch.as_tensor(tree.thresholds)
        state["values"][i] = torch.as_tensor(tree.values)
    state["base_score"][0] = ensemble.base_score
    state["grown"][0] = len(ensemble.trees)
    model.load_state_dict(state)
    return model


def ensemble_of(
    arrays: Mapping[str, np.ndarray], n_features: int, n_bins: int, learning_rate: float, trees: int | None = None
) -> Ensemble:
    """The Ensemble of the first `trees` trees (default: the grown ones) of a model's arrays. A malformed model
    (a split feature or threshold out of range, a leaf value that is not finite, more trees grown than it holds)
    is a ValueError naming the problem, from federation.gbdt's own reader."""
    grown = int(np.asarray(arrays["grown"]).reshape(-1)[0]) if trees is None else trees
    if not 0 <= grown <= len(arrays["values"]):
        raise ValueError(f"the model says {grown} trees are grown; it holds {len(arrays['values'])}")
    return Ensemble.from_dict(
        {
            "format": FORMAT,
            "base_score": float(np.asarray(arrays["base_score"]).reshape(-1)[0]),
            "learning_rate": float(learning_rate),
            "n_features": int(n_features),
            "n_bins": int(n_bins),
            "trees": [
                {
                    "features": [int(v) for v in arrays["features"][i]],
                    "thresholds": [int(v) for v in arrays["thresholds"][i]],
                    "values": [float(v) for v in arrays["values"][i]],
                }
                for i in range(grown)
            ],
        }
    )
