"""Leaf values from the coordinator's (noisy) sums: a regularised, clipped Newton step with shrinkage."""

from __future__ import annotations

import numpy as np


def leaf_values(G: np.ndarray, H: np.ndarray, reg_lambda: float, learning_rate: float, leaf_clip: float) -> np.ndarray:
    """learning_rate * clip(-G / (max(H, 0) + lambda), -leaf_clip, leaf_clip), elementwise.

    Noisy H can be negative or near 0 (an empty or small leaf): a true hessian sum is never negative, so it is
    floored at 0 before adding lambda, and the denominator is never below lambda > 0. The clip bounds what one
    noisy leaf can move the logit, whatever the noise drew."""
    if not (reg_lambda > 0 and learning_rate > 0 and leaf_clip > 0):
        raise ValueError(
            f"lambda ({reg_lambda}), learning rate ({learning_rate}) and leaf clip ({leaf_clip}) must be > 0"
        )
    G = np.asarray(G, dtype=np.float64)
    denom = np.maximum(np.asarray(H, dtype=np.float64), 0.0) + reg_lambda
    with np.errstate(over="ignore"):  # a huge noisy G over lambda overflows to inf, which the clip bounds
        return learning_rate * np.clip(-G / denom, -leaf_clip, leaf_clip)
