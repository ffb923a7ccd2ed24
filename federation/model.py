"""Credit models (logistic regression, a small MLP, the gbdt ensemble's carrier) and points-to-double-the-odds
scorecard scaling."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from federation.config import RunConfig

# What a run folder's model.json is (federation/audit_trail/derive.py writes it, federation/scoring.py reads it).
MODEL_FORMAT = "fedcredit-model/1"


class LogisticRegression(nn.Module):
    """log-odds of default = w.x + b."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


class MLP(nn.Module):
    """One hidden layer: enough for the nonlinear risk of credit data, small enough for DP-SGD."""

    def __init__(self, n_features: int, hidden: int = 32) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, hidden)
        self.act = nn.ReLU()
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(x))).squeeze(-1)


def build_model(kind: str, n_features: int, hidden: int = 32, seed: int = 0) -> nn.Module:
    """The same seed gives the same initial weights on the server and in every test."""
    # The CPU generator only, which is what the weights are drawn from: torch.manual_seed also queues a lazy seed
    # for CUDA, MTIA and XPU, capturing a stack trace each time (2-3 ms a call, at every message of every lender).
    torch.default_generator.manual_seed(seed)
    if kind == "logreg":
        return LogisticRegression(n_features)
    if kind == "mlp":
        return MLP(n_features, hidden)
    raise ValueError(f"unknown model '{kind}'")


def model_for(cfg: RunConfig, n_features: int, seed: int = 0) -> nn.Module:
    """The run's model: a network (`build_model`) or, for gbdt, the ensemble's arrays (federation/tree_model.py),
    all zero before the first round."""
    if cfg.model == "gbdt":
        from federation.tree_model import build_tree_model

        return build_tree_model(cfg, n_features)
    return build_model(cfg.model, n_features, cfg.hidden, seed)


def get_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()}
    model.load_state_dict(state, strict=True)


def array_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Probability of default, computed in float64 on a copy of the model: in float32 a record's probability moved
    by ~1e-7 with the batch it was computed in (the matrix product's blocking), so one applicant scored alone did
    not get the number the lenders' evaluation computed; in float64 the two agree to ~1e-15."""
    model.eval()
    double = copy.deepcopy(model).double()
    return torch.sigmoid(double(torch.as_tensor(x, dtype=torch.float64))).numpy()


@dataclass(frozen=True)
class Scorecard:
    """Score = offset + factor * ln(good:bad odds); `pdo` points double the odds.

    With the defaults a borrower at odds 50:1 scores 600 and every 20 points doubles the odds.
    """

    base_score: float = 600.0
    base_odds: float = 50.0
    pdo: float = 20.0

    @property
    def factor(self) -> float:
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        return self.base_score - self.factor * math.log(self.base_odds)

    def score(self, p_default: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(p_default, dtype=np.float64), 1e-12, 1 - 1e-12)
        return self.offset + self.factor * np.log((1 - p) / p)

    def probability(self, score: np.ndarray) -> np.ndarray:
        odds = np.exp((np.asarray(score, dtype=np.float64) - self.offset) / self.factor)
        return 1.0 / (1.0 + odds)
