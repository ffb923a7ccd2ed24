"""The aggregation a run's configuration names: Flower's own strategy, which the coordinator aggregates with and the
verifier redoes each round with, from the updates the coordinator publishes.

Why publish: without the updates, nothing ties a round's aggregate to what the lenders sent. A coordinator could
weight the updates as it liked, leave one out and still name its lender, or average in an update nobody sent, and
the run would verify. With record-level DP each lender's update is its own DP release (the epsilon it signs covers
it against anyone), so writing it into the ledger reveals nothing the coordinator did not already see. Nothing else
is published: without DP an update carries no guarantee at all, under lender-level DP the updates are un-noised
(the coordinator adds the noise to their sum), under secure aggregation the coordinator never sees one, and with
seeded noise (`reproducible-noise-not-private`) the noise could be recomputed from the run's seed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)

from federation.config import RunConfig
from federation.flower_logs import FLOWER_LOGGER

# The reply metric Flower's strategies weight by; each lender sends its manifest's train_records there.
WEIGHT_KEY = "num-examples"


def flower_strategy(cfg: RunConfig, **sampling: Any) -> Strategy:
    """The Flower strategy `cfg.strategy` names, with the run's parameters; `sampling`: how many lenders a round
    asks (Flower's fraction_train, min_train_nodes, ...; the verifier, which only aggregates, passes none)."""
    if cfg.strategy == "fedavg":
        return FedAvg(**sampling)
    if cfg.strategy == "fedprox":
        return FedProx(**sampling, proximal_mu=cfg.proximal_mu)
    if cfg.strategy == "fedadam":
        return FedAdam(**sampling, eta=cfg.server_learning_rate, eta_l=cfg.learning_rate)
    if cfg.strategy == "fedyogi":
        return FedYogi(**sampling, eta=cfg.server_learning_rate, eta_l=cfg.learning_rate)
    if cfg.strategy == "fedadagrad":
        return FedAdagrad(**sampling, eta=cfg.server_learning_rate, eta_l=cfg.learning_rate)
    if cfg.strategy == "fedmedian":
        return FedMedian(**sampling)
    if cfg.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**sampling, beta=cfg.trim_fraction)
    raise ValueError(f"unknown strategy '{cfg.strategy}'")


def publishes_updates(cfg: RunConfig) -> bool:
    """Whether the coordinator writes each aggregated update into the round's aggregate (see the module's
    docstring for why exactly these runs)."""
    return (
        cfg.model != "gbdt"
        and cfg.dp
        and cfg.dp_level == "record"
        and not cfg.secure_aggregation
        # Seeded noise (a test or benchmark run, flagged NOT PRIVATE) is recomputable from the seed the ledger holds:
        # published, the updates could be denoised by anyone with the run folder (found by a red team).
        and not cfg.reproducible_noise_not_private
    )


def aggregation_check(cfg: RunConfig) -> str:
    """What ties each round's model to the lenders' updates, in one sentence: the report states it, and the
    verifier's summary (which also counts the rounds it redid)."""
    if cfg.model == "gbdt":
        counts = cfg.gbdt_split_candidates == "noisy_quantiles"
        return (
            "every round's trees rebuilt from the leaf sums the lenders signed"
            + (", each split among the candidates their round-1 counts leave" if counts else "")
            + (" (their unmasked sums under secure aggregation)" if cfg.secure_aggregation else "")
        )
    if publishes_updates(cfg):
        return f"every round's aggregate redone with Flower's {cfg.strategy} from the updates the lenders signed"
    if cfg.secure_aggregation:
        return "aggregates not redone (secure aggregation: no update is seen); the unmasked weight sums are checked"
    if not cfg.dp:
        why = "no DP: an update carries no guarantee"
    elif cfg.dp_level == "lender":
        why = "lender-level DP: the updates are un-noised"
    else:
        why = "seeded noise: anyone could take it out of them"
    return (
        f"NOT CHECKED: the aggregates (the updates are not published; {why}), so the coordinator's averaging is trusted"
    )


class _Reply:
    """The part of a Flower reply Message that a strategy's aggregate_train reads (its content, and that it carries
    no error). Flower's Message cannot be made outside a running app (it takes the run id from the task's identity),
    and the verifier runs outside any; tests/test_aggregate_replay.py checks this gives the coordinator's model."""

    def __init__(self, arrays: Mapping[str, np.ndarray], weight: int) -> None:
        self.content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                "metrics": MetricRecord({WEIGHT_KEY: weight}),
            }
        )

    def has_error(self) -> bool:
        return False


def aggregate_updates(
    strategy: Strategy,
    rnd: int,
    previous: Mapping[str, np.ndarray],
    updates: Sequence[tuple[Mapping[str, np.ndarray], int]],
) -> dict[str, np.ndarray]:
    """Round `rnd`'s aggregate of `updates` ((arrays, weight) in the order the coordinator aggregated them) by
    Flower's `strategy` from the global model `previous`, in `previous`' dtypes as the coordinator keeps it (the
    server optimizers compute in float64). A server optimizer's state (FedAdam's moments) carries over between
    calls on one strategy, as in the coordinator: call it round after round."""
    if hasattr(strategy, "current_arrays"):  # FedAdam, FedYogi, FedAdagrad: set by configure_train in a run
        strategy.current_arrays = {k: np.asarray(v) for k, v in previous.items()}
    replies = [_Reply(arrays, weight) for arrays, weight in updates]
    with _quiet_flower():  # the strategy logs a line per aggregation: noise in a verifier's output
        new, _ = strategy.aggregate_train(rnd, replies)  # type: ignore[arg-type]
    if new is None:
        raise ValueError(f"round {rnd}: the strategy aggregated nothing")
    return {k: a.numpy().astype(previous[k].dtype, copy=False) if k in previous else a.numpy() for k, a in new.items()}


@contextmanager
def _quiet_flower() -> Iterator[None]:
    logger = logging.getLogger(FLOWER_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
