"""Aggregation strategies: Flower's own FedAvg, FedProx, FedAdam, FedYogi and FedAdagrad (Message API).

- FedAvg: McMahan et al. 2017, "Communication-efficient learning of deep networks from
  decentralized data" (arXiv:1602.05629).
- FedProx: Li et al. 2020, "Federated optimization in heterogeneous networks" (arXiv:1812.06127);
  lenders apply the proximal term (federation/training.py).
- FedAdam, FedYogi, FedAdagrad (server-side optimizers: the averaged update is a pseudo-gradient the
  coordinator steps with Adam, Yogi or Adagrad at rate eta = server-learning-rate): Reddi et al. 2021,
  "Adaptive federated optimization" (arXiv:2003.00295). They use only the aggregate, so they are
  post-processing of the lenders' DP releases.
- FedMedian and FedTrimmedAvg: Yin et al. 2018, "Byzantine-robust distributed learning: towards optimal
  statistical rates" (arXiv:1803.01498): coordinate-wise median / trimmed mean, robust to a minority of
  lenders sending arbitrary updates.
By default every lender takes part in every round. `lenders-per-round k` lets Flower draw k lenders a
round (a fixed-size sample, for scale): record-level accounting then simply counts the rounds each
lender really trained, and claims no amplification from this sampling; lender-level DP wraps the strategy and
does its own Poisson sampling (server/lender_level_dp.py). `--model gbdt` has a strategy of its own
(server/gbdt_strategy.py, Maddock et al. CCS 2022).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

from flwr.serverapp.strategy import Strategy

from federation.aggregation import flower_strategy
from federation.config import RunConfig
from server.coordinator_strategy import CoordinatorStrategy
from server.gbdt_strategy import GbdtStrategy
from server.lender_level_dp import LenderLevelDPStrategy


class _Sampling(TypedDict):
    """The arguments every Flower strategy takes for how many lenders a round asks."""

    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int


def make_strategy(cfg: RunConfig) -> Strategy:
    """The run's Flower strategy."""
    k = cfg.lenders_per_round or cfg.lenders
    common = _Sampling(
        fraction_train=k / cfg.lenders,
        fraction_evaluate=k / cfg.lenders,
        min_train_nodes=k,
        min_evaluate_nodes=k,
        min_available_nodes=cfg.lenders,
    )
    return flower_strategy(cfg, **common)


def coordinator_strategy(cfg: RunConfig, lender_of_node: Mapping[int, int], n_features: int = 0) -> CoordinatorStrategy:
    """The strategy the round driver uses, chosen once for the run: gradient boosting (`--model gbdt`, which
    grows trees instead of averaging models), the Flower strategy wrapped for lender-level DP, or passed through
    (no DP, or record-level DP, whose noise the lenders add)."""
    strategy = make_strategy(cfg)
    if cfg.model == "gbdt":
        return GbdtStrategy(cfg, strategy, lender_of_node, n_features)
    if cfg.dp and cfg.dp_level == "lender":
        return LenderLevelDPStrategy(cfg, strategy, lender_of_node)
    return CoordinatorStrategy(cfg, strategy, lender_of_node)
