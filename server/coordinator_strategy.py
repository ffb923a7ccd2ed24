"""The strategy the round driver uses: Flower's aggregation strategy as it is, for runs without DP or with
record-level DP (whose noise each lender adds in its own DP-SGD), and the interface its lender-level DP wrapper
(server/lender_level_dp.py) keeps.

As Flower's DifferentialPrivacyServerSideFixedClipping wraps any strategy, the run chooses its strategy once
(`server.strategies.coordinator_strategy`) and the round driver never asks which one it has: the strategy decides
which lenders a round asks (`configure_train`), whether a round may start at all (`stop_before`), what the lenders
are told of the mechanism (`mechanism`), how the screened updates are combined (`aggregate_train`) and how the
run's privacy is stated at the end (`privacy_summary`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federation.aggregation import publishes_updates
from federation.audit_trail.checkpoint import encode_arrays
from federation.audit_trail.run_view import RunView
from federation.config import RunConfig
from federation.gbdt.accounting import secure_sum_statement
from federation.gbdt_release import release_clip_norm
from federation.messages import ARRAYS, array_record, numpy_arrays
from federation.privacy.accountant import epsilons
from federation.secagg import SecAggError
from server.errors import RunFailed
from server.release_accounting import lender_delta
from server.run_record import RunRecord
from server.secure_rounds import SecureRound

log = logging.getLogger("fedcredit.server")


@dataclass
class RoundAggregate:
    """A round's aggregate as the ledger records it."""

    arrays: ArrayRecord  # the global model after the round (the previous one when the round is skipped)
    lenders: list[int]  # the lenders whose update it holds
    how: dict  # how it was made
    late: dict[int, str] = field(default_factory=dict)  # lenders whose update the aggregation could not use, and why


def in_dtypes_of(previous: ArrayRecord, new: ArrayRecord) -> ArrayRecord:
    """`new` in the dtypes of the model `previous` holds. Flower's server optimizers (FedAdam, FedYogi, FedAdagrad)
    return float64 arrays for a float32 model: the ledger hashed those, while model.pt and every lender hold them
    rounded to float32, so such a run did not verify (tests/test_federation.py)."""
    if all(k not in previous or a.dtype == previous[k].dtype for k, a in new.items()):  # no decoding needed
        return new
    dtypes = {k: a.dtype for k, a in previous.items()}
    return ArrayRecord({k: Array(v.astype(dtypes[k]) if k in dtypes else v) for k, v in numpy_arrays(new).items()})


def published_updates(trained: list[Message], lender_of_node: Mapping[int, int]) -> dict[str, dict[str, str]]:
    """Each aggregated update's arrays as the lender sent them (they hash to the update it signed), keyed by lender:
    what the aggregate records so that the verifier can redo the aggregation (federation/aggregation.py says why
    this publishes nothing the lenders' epsilons do not cover)."""
    return {
        str(lender_of_node[m.metadata.src_node_id]): encode_arrays(numpy_arrays(array_record(m.content, ARRAYS)))
        for m in trained
    }


class CoordinatorStrategy:
    """Flower's strategy, passed through: it draws the lenders and averages their updates (or secure aggregation
    sums them); no noise is added here."""

    # The state after a round is the model and the random module's: a run can resume from its checkpoint.
    keeps_checkpoints = True

    def __init__(self, cfg: RunConfig, strategy: Strategy, lender_of_node: Mapping[int, int]) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.lender_of_node = lender_of_node

    def reply_shapes(self, model_shapes: Mapping[str, tuple[int, ...]], rnd: int) -> dict[str, tuple[int, ...]]:
        """The arrays a plain training reply of round `rnd` must hold: the model's (a gbdt reply holds leaf sums,
        or counts, instead)."""
        return dict(model_shapes)

    def masked_length(self, model_shapes: Mapping[str, tuple[int, ...]], rnd: int) -> int:
        """The length of a secure-aggregation reply's one vector: the update, then the record count."""
        return sum(math.prod(shape) for shape in model_shapes.values()) + 1

    def stop_before(self, rnd: int) -> dict:
        """Why the run must stop before round `rnd` ({"kind", "round", "reason"}), or {} to go on."""
        return {}

    def configure_train(self, rnd: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """The round's training messages, one per lender asked."""
        return list(self.strategy.configure_train(rnd, arrays, config, grid))

    def asks_every_lender(self) -> bool:
        """Whether each round asks the whole federation: only then do declines from all it asked end the run
        (lenders drawn that decline say nothing about the others)."""
        return not self.cfg.lenders_per_round

    def mechanism(self) -> dict:
        """What the coordinator asks for this round (each lender checks it against its own policy)."""
        cfg = self.cfg
        if not cfg.dp:
            return {"dp": False}
        return {
            "dp": True,
            "granularity": cfg.dp_level,
            "accountant": cfg.accountant,
            "clip_norm": release_clip_norm(cfg),
            "noise_multiplier": cfg.noise_multiplier or None,
            "delta": cfg.delta or None,
            "reproducible_noise_not_private": cfg.reproducible_noise_not_private,
        }

    def aggregate_train(
        self, rnd: int, arrays: ArrayRecord, trained: list[Message], secure: SecureRound | None, setup_failure: str
    ) -> RoundAggregate:
        """The round's new global model from the screened updates; the previous one (skipped, with the reason)
        when there is none to make."""
        # Taken before the strategy runs: Flower's FedMedian and FedTrimmedAvg pop the arrays out of the replies.
        published = published_updates(trained, self.lender_of_node) if publishes_updates(self.cfg) else None
        new_arrays, why_not, weights = (
            (None, setup_failure, None) if setup_failure else self._combine(rnd, arrays, trained, secure)
        )
        how: dict = {"strategy": self.cfg.strategy, "secure_aggregation": self.cfg.secure_aggregation}
        aggregated = [self.lender_of_node[m.metadata.src_node_id] for m in trained]
        late: dict[int, str] = {}
        if secure is not None:
            if secure.unmask_request:
                how["unmask"] = secure.unmask_request
                how["confirmations"] = {str(k): v for k, v in sorted(secure.confirmations.items())}
            # sent an update the unmasking could not use
            late = {lender: why for lender, why in secure.dropped.items() if lender in aggregated}
            aggregated = [lender for lender in aggregated if lender not in late]
        if weights is not None:
            how["weight_sum"] = weights
        if new_arrays is not None and published is not None:
            how["updates"] = published
        if new_arrays is None:
            # The global model stays as it was; the round still counts, is evaluated and checkpointed.
            log.warning("round %d: the model is unchanged: %s", rnd, why_not)
            return RoundAggregate(arrays, [], {**how, "skipped": True, "reason": why_not}, late)
        return RoundAggregate(in_dtypes_of(arrays, new_arrays), aggregated, how, late)

    def _combine(
        self, rnd: int, arrays: ArrayRecord, trained: list[Message], secure: SecureRound | None
    ) -> tuple[ArrayRecord | None, str, int | None]:
        """The new global model, "" and (secure aggregation) the unmasked weight sum; or None and why there is
        none."""
        if not trained:
            return None, "no usable update (every lender failed, was rejected or declined)", None
        if secure:
            try:
                new, weights = secure.aggregate(arrays, trained)
                return new, "", weights
            except SecAggError as exc:
                return None, str(exc), None
        new_arrays, _ = self.strategy.aggregate_train(rnd, trained)
        if new_arrays is None:
            raise RunFailed(f"round {rnd}: aggregation produced no model")
        return new_arrays, "", None

    def epsilon_spent(self, record: RunRecord) -> float:
        """The largest epsilon any lender has spent so far (by its latest release)."""
        return max(
            (b["epsilon"] for bodies in record.releases.values() for b in bodies[-1:] if b.get("epsilon") is not None),
            default=0.0,
        )

    def account_ahead(self, record: RunRecord) -> AheadAccounting | None:
        """Start computing each lender's final epsilons, which privacy_summary states, in a thread of this process,
        while the lenders compute their own final statements elsewhere (the accountant's cache keeps them). At 1,000
        lenders that is about 13 s of PRV accounting per party (benchmarks/results/perf_scale.md)."""
        cfg = self.cfg
        if not cfg.dp:
            return None
        jobs = [
            (events, lender_delta(cfg, record.manifests[lender]))
            for lender in range(cfg.lenders)
            if lender in record.manifests and (events := record.events(lender))
        ]
        return AheadAccounting(jobs)

    def privacy_summary(self, record: RunRecord, view: RunView) -> dict:
        """Per lender: final epsilon under both of Opacus' accountants."""
        cfg = self.cfg
        if not cfg.dp:
            return {"dp": False}
        units: dict[str, dict] = {}
        for lender in range(cfg.lenders):
            bodies = record.releases.get(lender, [])
            events = record.events(lender)
            delta = lender_delta(cfg, record.manifests[lender])
            both = epsilons(events, delta) if events else {"rdp": 0.0, "prv": 0.0}
            units[str(lender)] = {
                "budget": cfg.budget_for(lender),
                "delta": delta,
                "epsilon": both[cfg.accountant],
                "epsilon_rdp": both["rdp"],
                "epsilon_prv": both["prv"],
                "rounds_released": len(events),
                "steps": sum(e.steps for e in events),
                "noise_multiplier": events[-1].noise_multiplier if events else None,
                "sample_rate": events[-1].sample_rate if events else None,
                "clip_norm": release_clip_norm(cfg),
                "noise": bodies[-1].get("noise") if bodies else None,
            }
            statement = secure_sum_statement(bodies, partial(_epsilon, delta=delta, accountant=cfg.accountant))
            if statement is not None:  # gbdt under secure aggregation: the assumption and the own-share epsilon
                units[str(lender)]["secure_sum"] = statement
        return {"dp": True, "granularity": cfg.dp_level, "accountant": cfg.accountant, "units": units}


def _epsilon(events: list, delta: float, accountant: str) -> float:
    return epsilons(events, delta)[accountant]


class AheadAccounting:
    """The coordinator's per-lender epsilons computed in a thread (CoordinatorStrategy.account_ahead). `cancel` stops
    it after the lender it is on: a run that failed at the final statements went on computing every lender's PRV
    epsilon (seconds at 1,000 lenders) in a thread nobody would read, in the process of a sweep's next run too."""

    def __init__(self, jobs: list[tuple[list, float]]) -> None:
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._account, args=(jobs,), name="account-ahead", daemon=True)
        self._thread.start()

    def _account(self, jobs: list[tuple[list, float]]) -> None:
        for events, delta in jobs:
            if self._cancelled.is_set():
                return
            try:
                epsilons(events, delta)
            except Exception:  # privacy_summary computes it again, and says what is wrong
                return

    def join(self) -> None:
        self._thread.join()

    def cancel(self) -> None:
        self._cancelled.set()
        self._thread.join()
