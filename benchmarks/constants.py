"""Per-dataset benchmark constants: one place, the same budget of local steps for every method.

Pooled training and each local-only lender train for rounds x local_epochs epochs with the same model,
batch size and learning rate as one federated run, so no method gets more optimisation than another.
"""

from __future__ import annotations

from dataclasses import dataclass

from federation.config import DATASETS
from federation.config import PARTITIONS as PARTITION_NAMES

# The benchmark covers every built-in dataset (bring-your-own csv has no reference numbers to compare with).
BENCH_DATASETS = tuple(name for name in DATASETS if name != "csv")
# How a real dataset is split into lenders ('natural' needs the lender column only the synthetic market has).
SPLITS = tuple(name for name in PARTITION_NAMES if name != "natural")


@dataclass(frozen=True)
class DatasetConstants:
    lenders: int
    model: str = "logreg"
    batch_size: int = 128
    learning_rate: float = 0.1
    rounds: int = 10
    local_epochs: int = 1
    clip_norm: float = 1.0  # DP-SGD per-example clipping norm (used by the private federated cells)
    records: int = 20000  # synthetic only
    # The local optimizer (federation/training.py LocalOptimizer) and the mlp's width, for every neural method.
    optimizer: str = "sgd"
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    hidden: int = 32
    # scikit-learn HistGradientBoostingClassifier's parameters for the "hgb" method (the best pooled model).
    hgb: tuple[tuple[str, float], ...] = (("learning_rate", 0.1), ("max_iter", 100))

    def hgb_params(self) -> dict[str, float | int]:
        return {k: int(v) if k in ("max_iter", "max_leaf_nodes", "min_samples_leaf") else v for k, v in self.hgb}


CONSTANTS = {  # one entry per BENCH_DATASETS name (tests/test_options.py checks it)
    "synthetic": DatasetConstants(lenders=5, batch_size=64, learning_rate=0.1),
    # Taiwan: chosen on Dirichlet(0.5), seeds 0-1: of 6 optimiser settings (batch 128/256/512, learning rate
    # 0.1-1.0, 10 or 20 rounds x 1 epoch, 5 rounds x 2 epochs) 5 x 2 gave the best FedAvg with and without DP;
    # of clip norms 1, 2, 3, 5, 10, 2 gave the best FedAvg at epsilon 1 (3 was 0.0005 better at epsilon 3).
    "taiwan_default": DatasetConstants(lenders=10, rounds=5, local_epochs=2, clip_norm=2.0),
    "give_me_some_credit": DatasetConstants(lenders=10),
    "german_credit": DatasetConstants(lenders=5, batch_size=32, rounds=20),
    "spanish_credit": DatasetConstants(lenders=5, batch_size=64, rounds=20),
}

# Partitions per dataset: the synthetic market has a natural lender split; the real ones are split.
PARTITIONS = {
    "synthetic": [("natural", 0.5)],
    "default": [("iid", 0.5), ("dirichlet", 0.5), ("dirichlet", 0.1), ("quantity", 0.5)],
}
# pooled: the same model as the federation, trained on all lenders' records (the same-family limit); hgb: scikit-learn's
# HistGradientBoostingClassifier on the same records (the best pooled model: the limit of the headline); local: each
# lender alone; then the federated methods (gbdt: the DP federated gradient boosting, where this build has it).
NON_PRIVATE = ("pooled", "hgb", "local")
FEDERATED = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "gbdt")
METHODS = (*NON_PRIVATE, *FEDERATED)  # what --methods accepts
DEFAULT_METHODS = ("pooled", "hgb", "local", "fedavg", "fedprox", "fedadam", "gbdt")


def unavailable(method: str) -> str:
    """Why `method` cannot run in this build ('' if it can): the gbdt cells wait for --model gbdt."""
    from federation.config import MODELS

    if method == "gbdt" and "gbdt" not in MODELS:
        return "--model gbdt is not in this build (federation.config.MODELS); its cells are skipped"
    return ""


EPSILONS = (float("inf"), 1.0, 3.0, 8.0)
