"""The model: full binary trees of fixed depth over public bins, and their ensemble, as plain data.

A tree's structure is public (chosen by the coordinator, federation/gbdt/structure.py): for each internal node in
heap order (node i has children 2i + 1 and 2i + 2) a feature and a bin threshold; a record goes right when its
bin is above the threshold. A tree of depth d has 2**d - 1 internal nodes and 2**d leaves, leaf j being heap node
2**d - 1 + j. The leaf values come from the lenders' noisy sums (federation/gbdt/newton.py) and already include
the learning rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

FORMAT = "fedcredit-gbdt/1"


@dataclass(frozen=True)
class Tree:
    features: np.ndarray  # [2**d - 1] int: the feature each internal node splits on
    thresholds: np.ndarray  # [2**d - 1] int: a record goes right when its bin > threshold
    values: np.ndarray  # [2**d] float: the leaf values (learning rate applied)

    @property
    def depth(self) -> int:
        return len(self.values).bit_length() - 1

    @property
    def n_leaves(self) -> int:
        return len(self.values)

    def with_values(self, values: np.ndarray) -> Tree:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != self.values.shape:
            raise ValueError(f"a tree of depth {self.depth} has {self.n_leaves} leaves, got {values.shape} values")
        return Tree(self.features, self.thresholds, values)

    def leaf_index(self, Xb: np.ndarray) -> np.ndarray:
        """The leaf (0 .. 2**d - 1) each binned record falls in."""
        rows = np.arange(len(Xb))
        node = np.zeros(len(Xb), dtype=np.int64)
        for _ in range(self.depth):
            right = Xb[rows, self.features[node]] > self.thresholds[node]
            node = 2 * node + 1 + right
        return node - (self.n_leaves - 1)


@dataclass(frozen=True)
class Ensemble:
    """base_score + the sum of one leaf value per tree = the logit. `learning_rate` is the shrinkage already
    applied to every leaf value (recorded for the report, not applied again)."""

    base_score: float
    learning_rate: float
    n_features: int
    n_bins: int
    trees: list[Tree] = field(default_factory=list)

    def _check(self, Xb: np.ndarray) -> np.ndarray:
        Xb = np.asarray(Xb)
        if Xb.ndim != 2 or Xb.shape[1] != self.n_features:
            raise ValueError(f"the model takes binned records of {self.n_features} features, got shape {Xb.shape}")
        return Xb

    def leaf_index(self, Xb: np.ndarray) -> np.ndarray:
        """[n, T] the leaf of every record in every tree."""
        Xb = self._check(Xb)
        if not self.trees:
            return np.zeros((len(Xb), 0), dtype=np.int64)
        return np.stack([t.leaf_index(Xb) for t in self.trees], axis=1)

    def predict_logit(self, Xb: np.ndarray) -> np.ndarray:
        Xb = self._check(Xb)
        logit = np.full(len(Xb), float(self.base_score))
        for t in self.trees:
            logit += t.values[t.leaf_index(Xb)]
        return logit

    def predict_proba(self, Xb: np.ndarray) -> np.ndarray:
        """Probability of the positive class (default)."""
        return sigmoid(self.predict_logit(Xb))

    def with_trees(self, trees: list[Tree]) -> Ensemble:
        return Ensemble(self.base_score, self.learning_rate, self.n_features, self.n_bins, [*self.trees, *trees])

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "base_score": float(self.base_score),
            "learning_rate": float(self.learning_rate),
            "n_features": int(self.n_features),
            "n_bins": int(self.n_bins),
            "trees": [
                {
                    "features": [int(v) for v in t.features],
                    "thresholds": [int(v) for v in t.thresholds],
                    "values": [float(v) for v in t.values],
                }
                for t in self.trees
            ],
        }

    def to_json(self) -> str:
        # Python writes floats by repr, the shortest text that reads back to the same double: the round trip is exact.
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, raw: dict) -> Ensemble:
        """Read an ensemble back; a malformed one is a ValueError naming the problem (a run folder can be edited)."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model")
        try:
            n_features, n_bins = _whole(raw["n_features"], "n_features"), _whole(raw["n_bins"], "n_bins")
            if not 2 <= n_bins <= 256:
                raise ValueError(f"the model's n_bins must be between 2 and 256, got {n_bins}")
            base, rate = _real(raw["base_score"], "base_score"), _real(raw["learning_rate"], "learning_rate")
            trees = [_tree(t, i, n_features, n_bins) for i, t in enumerate(raw["trees"])]
        except KeyError as missing:
            raise ValueError(f"the model lacks the field {missing}") from None
        except TypeError as bad:
            raise ValueError(f"the model is malformed: {bad}") from None
        return cls(base, rate, n_features, n_bins, trees)

    @classmethod
    def from_json(cls, text: str) -> Ensemble:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as bad:
            raise ValueError(f"the model is not JSON: {bad}") from None
        return cls.from_dict(raw)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _whole(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"the model's {name} must be a positive whole number, got {v!r}")
    return v


def _real(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
        raise ValueError(f"the model's {name} must be a finite number, got {v!r}")
    return float(v)


def _tree(raw: dict, i: int, n_features: int, n_bins: int) -> Tree:
    features = np.asarray(raw["features"])
    thresholds = np.asarray(raw["thresholds"])
    values = np.asarray(raw["values"])
    leaves = len(values)
    if leaves < 2 or leaves & (leaves - 1) or len(features) != leaves - 1 or len(thresholds) != leaves - 1:
        raise ValueError(f"tree {i}: {len(features)} nodes and {leaves} leaves do not make a full binary tree")
    for name, arr, top in (("features", features, n_features), ("thresholds", thresholds, n_bins - 1)):
        if arr.dtype.kind not in "iu" or (arr < 0).any() or (arr >= top).any():
            raise ValueError(f"tree {i}: {name} must be whole numbers in 0..{top - 1}")
    if values.dtype.kind not in "iuf" or not np.isfinite(values).all():
        raise ValueError(f"tree {i}: leaf values must be finite numbers")
    return Tree(features.astype(np.int64), thresholds.astype(np.int64), values.astype(np.float64))
