"""DP federated gradient boosting as the coordinator's strategy (`--model gbdt`), after Maddock, Cormode, Wang,
Maple and Jha, "Federated Boosted Decision Trees with Differential Privacy", ACM CCS 2022 (arXiv:2210.02910):
totally random tree structures, Newton leaf values from noisy gradient and hessian sums, leaf clipping, shrinkage
and batched boosting (several trees a round against the same residuals).

Each round the coordinator draws the structure of the round's trees from public information only (the number of
features, the public bins and its own generator: federation.gbdt.structure, no record involved, so it costs no
privacy; with noisy-quantile split candidates, among the thresholds that round 1's noisy count release leaves, which
is post-processing of an accounted release, federation/gbdt/split_candidates.py), sends the ensemble with those structures to the lenders, and receives from each its noisy leaf sums
(each lender adds Gaussian noise of its own to its own sums, clients/dp_round.py). It sums them in lender order
and sets each leaf to the clipped, shrunk Newton step -G / (H + lambda): post-processing of the noisy sums. The
coordinator never sees a record, an exact sum, or a lender's noise. Each aggregate records the round's structures and
the lenders' released sums, from which the verifier rebuilds every round's model (federation/audit_trail/
gbdt_ledger.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federation.audit_trail.gbdt_ledger import round_record
from federation.audit_trail.run_view import stop_reason
from federation.config import RunConfig
from federation.gbdt.newton import leaf_values
from federation.gbdt.structure import random_trees
from federation.gbdt_release import COUNTS, reply_name_and_shape, split_candidates
from federation.messages import ARRAYS, numpy_arrays
from federation.secagg import SecAggError
from federation.tree_model import count_rounds, is_count_round, round_trees
from server.coordinator_strategy import CoordinatorStrategy, RoundAggregate
from server.secure_rounds import SecureRound


def _record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


class GbdtStrategy(CoordinatorStrategy):
    """Grows the round's trees: random public structure out, noisy leaf sums in, Newton leaf values."""

    # The structure generator's state is not checkpointed: a gbdt run cannot resume.
    keeps_checkpoints = False

    def __init__(self, cfg: RunConfig, strategy: Strategy, lender_of_node: Mapping[int, int], n_features: int) -> None:
        super().__init__(cfg, strategy, lender_of_node)
        self.n_features = n_features
        # The structures are public and need no secrecy: seeded, so the same seed grows the same shapes.
        self.rng = np.random.default_rng(cfg.seed)
        self.asked: dict[int, dict[str, np.ndarray]] = {}  # each round's model with its new trees' structure
        self.recorded: dict[int, dict] = {}  # what each round's aggregate records of its trees
        # The (feature, threshold) pairs the trees draw from: every pair (None) unless a count round found fewer.
        self.candidates: np.ndarray | None = None

    def stop_before(self, rnd: int) -> dict:
        """A run whose count release aggregated no lender's counts (every lender asked declined, failed or was left
        out, or secure aggregation could not unmask) stops before its first tree: drawing among every pair instead
        would let a coordinator drop the counts it was paid for and split anywhere (found by a red team)."""
        if count_rounds(self.cfg) and rnd == count_rounds(self.cfg) + 1 and self.candidates is None:
            return {"kind": "no_counts", "round": rnd, "reason": stop_reason({"kind": "no_counts", "round": rnd})}
        return {}

    def reply_shapes(self, model_shapes: Mapping[str, tuple[int, ...]], rnd: int) -> dict[str, tuple[int, ...]]:
        name, shape = reply_name_and_shape(self.cfg, rnd, self.n_features)
        return {name: shape}

    def masked_length(self, model_shapes: Mapping[str, tuple[int, ...]], rnd: int) -> int:
        """Under secure aggregation a lender masks its noisy leaf sums (or counts) as they are (a plain sum)."""
        return math.prod(reply_name_and_shape(self.cfg, rnd, self.n_features)[1])

    def configure_train(self, rnd: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        cfg = self.cfg
        model = {k: v.copy() for k, v in numpy_arrays(arrays).items()}
        if not is_count_round(cfg, rnd):  # a count round sends the model as it is: its release ignores it
            trees = random_trees(
                self.rng, cfg.gbdt_trees_per_round, cfg.gbdt_depth, self.n_features, cfg.gbdt_bins, self.candidates
            )
            rows = round_trees(cfg, rnd)
            model["features"][rows] = np.stack([t.features for t in trees])
            model["thresholds"][rows] = np.stack([t.thresholds for t in trees])
        self.asked[rnd] = model
        return super().configure_train(rnd, _record(model), config, grid)

    def _combine(
        self, rnd: int, arrays: ArrayRecord, trained: list[Message], secure: SecureRound | None
    ) -> tuple[ArrayRecord | None, str, int | None]:
        if not trained:
            return None, "no usable update (every lender failed, was rejected or declined)", None
        cfg = self.cfg
        name, shape = reply_name_and_shape(cfg, rnd, self.n_features)
        if secure is not None:  # only the survivors' sum: no lender's own sums are ever seen
            try:
                total = secure.aggregate_sum(trained, math.prod(shape)).reshape(shape)
            except SecAggError as exc:
                return None, str(exc), None
            self.recorded[rnd] = round_record(rnd, cfg, self.asked[rnd], secure_sum=total)
        else:
            total = np.zeros(shape, dtype=np.float64)
            released: dict[int, np.ndarray] = {}
            for msg in trained:  # in lender order: the same sums in any runtime
                sums = numpy_arrays(msg.content.array_records[ARRAYS])[name]
                released[self.lender_of_node[msg.metadata.src_node_id]] = sums
                total = total + sums
            self.recorded[rnd] = round_record(rnd, cfg, self.asked[rnd], released)
        if name == COUNTS:  # the trees of the rounds after it draw among the thresholds the noisy counts leave
            self.candidates = split_candidates(cfg, total, self.n_features)
            self.recorded[rnd]["candidates"] = len(self.candidates) if self.candidates is not None else None
            return _record(self.asked[rnd]), "", None
        model = {k: v.copy() for k, v in self.asked[rnd].items()}
        rows = round_trees(cfg, rnd)
        model["values"][rows] = leaf_values(
            total[..., 0], total[..., 1], cfg.gbdt_lambda, cfg.gbdt_learning_rate, cfg.gbdt_leaf_clip
        )
        model["grown"] = np.array([rows.stop], dtype=np.int64)
        return _record(model), "", None

    def aggregate_train(
        self, rnd: int, arrays: ArrayRecord, trained: list[Message], secure: SecureRound | None, setup_failure: str
    ) -> RoundAggregate:
        result = super().aggregate_train(rnd, arrays, trained, secure, setup_failure)
        if not result.how.get("skipped"):  # the ledger can rebuild the round's trees (audit_trail/gbdt_ledger.py)
            result.how["gbdt"] = self.recorded.pop(rnd)
        return result
