"""Credit-model metrics: AUC and KS from scikit-learn's ROC curve, Gini, Brier score and log loss."""

from __future__ import annotations

import math

import numpy as np
from sklearn import config_context
from sklearn.metrics import auc as area_under_curve
from sklearn.metrics import roc_curve

METRICS = ("auc", "ks", "gini", "brier", "loss")


def credit_metrics(y_true: np.ndarray, p_default: np.ndarray) -> dict[str, float]:
    """AUC, KS (max TPR - FPR), Gini (2 AUC - 1), Brier score and log loss.

    With a single class in `y_true`, ranking metrics are undefined and reported as NaN.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(p_default, dtype=np.float64), 1e-7, 1 - 1e-7)
    if not (np.isfinite(y).all() and np.isin(y, (0.0, 1.0)).all()):
        raise ValueError("credit metrics need outcomes 0 or 1")
    if not np.isfinite(p).all():  # NaN survives the clip
        raise ValueError("credit metrics need finite scores")
    # Checked here once, so scikit-learn's own argument checks (a third of the time for one lender's test records,
    # at every evaluation of every lender) are skipped. The Brier score
    # is the mean squared difference, in numpy: brier_score_loss checked its arguments again whatever the config said
    # (tests/test_model.py compares the two).
    with config_context(skip_parameter_validation=True, assume_finite=True):
        out = {
            "brier": float(np.mean((p - y) ** 2)) if len(y) else math.nan,
            "loss": _log_loss(y, p) if len(y) else math.nan,
        }
        if len(np.unique(y)) < 2:
            return {"auc": math.nan, "ks": math.nan, "gini": math.nan, **out}
        fpr, tpr, _ = roc_curve(y, p)
        auc = float(area_under_curve(fpr, tpr))  # what roc_auc_score computes for two classes, from the same curve
    return {"auc": auc, "ks": float(np.max(tpr - fpr)), "gini": 2 * auc - 1, **out}


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """scikit-learn's log_loss for outcomes 0/1 and clipped probabilities, without its label encoding (which took
    most of an evaluation's metrics); tests/test_model.py compares it with log_loss."""
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def weighted_mean(values: list[float], weights: list[float]) -> float:
    """Mean over the lenders where the metric is defined, weighted by their test records."""
    pairs = [(v, w) for v, w in zip(values, weights, strict=False) if not math.isnan(v) and w > 0]
    if not pairs:
        return math.nan
    return float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs))
