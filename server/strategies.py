"""Aggregation strategies: Flower's own FedAvg, FedProx and FedAdam (Message API).

- FedAvg: McMahan et al. 2017, "Communication-efficient learning of deep networks from
  decentralized data" (arXiv:1602.05629).
- FedProx: Li et al. 2020, "Federated optimization in heterogeneous networks" (arXiv:1812.06127);
  lenders apply the proximal term (federation/training.py).
- FedAdam: Reddi et al. 2021, "Adaptive federated optimization" (arXiv:2003.00295).
Every lender takes part in every round (fraction 1.0): sampling lenders is a privacy decision
(amplification is only valid under real Poisson sampling) and belongs to lender-level DP.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from federation.config import RunConfig


def make_strategy(cfg: RunConfig) -> Strategy:
    common = dict(
        fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=1, min_evaluate_nodes=1,
        min_available_nodes=cfg.lenders,
    )
    if cfg.strategy == "fedavg":
        return FedAvg(**common)
    if cfg.strategy == "fedprox":
        return FedProx(**common, proximal_mu=cfg.proximal_mu)
    if cfg.strategy == "fedadam":
        return FedAdam(**common, eta=cfg.server_learning_rate, eta_l=cfg.learning_rate)
    raise ValueError(f"unknown strategy '{cfg.strategy}'")
