"""The round driver: enrols the lenders, then plays the rounds on top of the run's strategy.

We drive the rounds ourselves instead of Flower's `Strategy.start` so that every reply passes the message inspector
before aggregation, replies are aggregated in lender order (same seed, same numbers in any runtime), lenders that
decline are left out, the run ends when no lender trains, and everything the coordinator asks and receives goes
into the signed ledger: each round's roster, every lender's signed update, refusal and evaluation, every lender
left out and why, and each aggregate. What differs between lender-level DP and the rest (sampling, admission,
noise) is the strategy's (server/coordinator_strategy.py, server/lender_level_dp.py), chosen once here.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from federation.audit_trail.canonical import arrays_hash
from federation.audit_trail.run_view import RunView, stop_reason
from federation.config import RunConfig
from federation.messages import MASKED, numpy_arrays, run_config_record
from federation.model import array_shapes, model_for
from federation.runfolder import RunFolder
from federation.secagg import SecAggError
from server import checkpoints
from server.coordinator_strategy import CoordinatorStrategy
from server.enrolment import collect_manifests, wait_for_nodes
from server.evaluation import evaluate_round, evaluating_nodes
from server.ledger_keeper import LedgerKeeper
from server.messaging import ask
from server.release_accounting import record_releases
from server.run_record import RoundSummary, RunRecord
from server.screening import Rejection, screen_train_replies, unanswered
from server.secure_rounds import SecureRound
from server.strategies import coordinator_strategy

log = logging.getLogger("fedcredit.server")


@dataclass
class Federation:
    """What every round needs: where the lenders are, who they are, and the run's strategy."""

    grid: Grid
    cfg: RunConfig
    keeper: LedgerKeeper
    lender_of_node: dict[int, int]
    strategy: CoordinatorStrategy
    config: ConfigRecord  # the run's configuration, as every request carries it
    shapes: dict[str, tuple[int, ...]]  # the model's arrays: what a plain training reply must hold

    def sender(self, msg: Message) -> int:
        """The lender a reply comes from."""
        return self.lender_of_node[msg.metadata.src_node_id]

    def addressee(self, msg: Message) -> int:
        """The lender a request goes to."""
        return self.lender_of_node[msg.metadata.dst_node_id]

    def masked_shape(self, rnd: int) -> dict[str, tuple[int, ...]]:
        """What a secure-aggregation reply holds instead: one masked vector (its length is the strategy's)."""
        return {MASKED: (self.strategy.masked_length(self.shapes, rnd),)}


def drive_rounds(
    grid: Grid,
    cfg: RunConfig,
    folder: RunFolder,
    on_round: Callable[[RoundSummary], None] | None,
    keeper: LedgerKeeper,
    checkpoint_key: bytes,
    state: dict | None = None,
) -> tuple[RunRecord, ArrayRecord, torch.nn.Module, CoordinatorStrategy]:
    """Play every round (from the checkpointed one on, given its `state`). Returns the run's record, the final
    global model (arrays, and the module they fill) and the strategy that made it."""
    record = RunRecord()
    fed, model, view = _enrol(grid, cfg, keeper, record, resumed=state is not None)
    random.seed(cfg.seed)  # Flower's strategies draw lenders with the random module: same seed, same lenders
    first_round = checkpoints.restore(state, model, record, view) if state is not None else 1
    arrays = ArrayRecord(model.state_dict())
    for rnd in range(first_round, cfg.rounds + 1):
        played = _play_round(fed, record, rnd, arrays)
        if played is None:
            break
        arrays, summary = played
        record.rounds.append(summary)
        # The checkpoint first, then the ledger's round_finished: a run killed between the two resumes from this
        # round's checkpoint and writes the entry then (server/loop.py `_resume`). The other way round, a kill after
        # the entry left a finished round with only the previous round's checkpoint: the resumed run played it again,
        # and a ledger holding round 2 finished twice could not be finished at all (found by a red team).
        if fed.strategy.keeps_checkpoints:
            checkpoints.save_round(folder.staging, checkpoint_key, keeper.run, rnd, arrays, record.rounds)
        keeper.round_finished(rnd, summary.seconds)
        if on_round:
            on_round(summary)
    record.model_hash = arrays_hash(numpy_arrays(arrays))
    return record, arrays, model, fed.strategy


def _enrol(
    grid: Grid, cfg: RunConfig, keeper: LedgerKeeper, record: RunRecord, resumed: bool
) -> tuple[Federation, torch.nn.Module, RunView]:
    """Wait for the lenders, sign their manifests into the ledger (a resumed run has them already) and build the
    initial model from the features they state."""
    by_node = collect_manifests(grid, cfg, wait_for_nodes(grid, cfg.lenders))
    for lender, manifest, attestation in sorted(by_node.values(), key=lambda item: item[0]):
        keeper.manifest(lender, manifest, attestation, append=not resumed)
    view = RunView(keeper.entries())
    record.manifests = dict(view.manifests)
    model = model_for(cfg, len(record.manifests[0]["features"]), seed=cfg.seed)
    lender_of_node = {node: lender for node, (lender, _, _) in by_node.items()}
    strategy = coordinator_strategy(cfg, lender_of_node, len(record.manifests[0]["features"]))
    fed = Federation(grid, cfg, keeper, lender_of_node, strategy, run_config_record(cfg), array_shapes(model))
    return fed, model, view


def _play_round(
    fed: Federation, record: RunRecord, rnd: int, arrays: ArrayRecord
) -> tuple[ArrayRecord, RoundSummary] | None:
    """One round: ask, screen, account, aggregate, evaluate. Returns the new global model and the round's summary,
    or None when the run stops before or during it (`record.stop` says why)."""
    start = time.time()
    if stop := fed.strategy.stop_before(rnd):
        _stop(record, stop)
        return None
    messages = fed.strategy.configure_train(rnd, arrays, ConfigRecord(dict(fed.config)), fed.grid)
    roster = sorted(fed.addressee(m) for m in messages)
    fed.keeper.round_started(rnd, roster, fed.strategy.mechanism())
    secure, messages, setup_failure, left_out = _open_secure_round(fed, rnd, messages)
    replies = ask(fed.grid, messages) if messages else []
    shapes = fed.masked_shape(rnd) if secure else fed.strategy.reply_shapes(fed.shapes, rnd)
    checked, rejected = screen_train_replies(replies, shapes, arrays, fed.cfg, fed.sender)
    rejected += unanswered({fed.addressee(m) for m in messages}, checked, rejected, fed.sender)
    rejected += left_out
    trained = [msg for msg, plain in checked if not plain["metrics"].get("declined")]
    # A rejected reply that still carries a valid release is accounted too; a lender that failed released nothing.
    releases = [(fed.sender(m), p) for m, p in checked] + [(lender, p) for lender, _, p in rejected if p is not None]
    declined = record_releases(fed.keeper, record, fed.cfg, rnd, releases)
    for lender, reason, _ in sorted(rejected, key=lambda item: item[0]):
        log.warning("round %d: lender %d left out: %s", rnd, lender, reason)
        fed.keeper.rejected(rnd, lender, reason)
    # Stop only when every lender of the federation was asked and declined.
    if fed.strategy.asks_every_lender() and messages and not trained and not rejected and not setup_failure:
        _stop(record, {"kind": "refused", "round": rnd, "reason": stop_reason({"kind": "refused", "round": rnd})})
        return None
    result = fed.strategy.aggregate_train(rnd, arrays, trained, secure, setup_failure)
    for lender, why in sorted(result.late.items()):
        fed.keeper.rejected(rnd, lender, why)
    fed.keeper.aggregate(rnd, result.lenders, result.arrays, result.how)
    nodes = evaluating_nodes(fed.cfg, fed.lender_of_node, roster)
    scores = evaluate_round(fed.grid, rnd, result.arrays, fed.config, nodes, fed.lender_of_node, fed.keeper)
    seconds = time.time() - start
    summary = RoundSummary(rnd, len(trained), declined, scores, fed.strategy.epsilon_spent(record), seconds)
    return result.arrays, summary


def _stop(record: RunRecord, stop: dict) -> None:
    """End the run here: the stop (kind, round, the one sentence for it) goes into the record and the log."""
    record.stop = stop
    log.warning(stop["reason"])


def _open_secure_round(
    fed: Federation, rnd: int, messages: list[Message]
) -> tuple[SecureRound | None, list[Message], str, list[Rejection]]:
    """With secure aggregation, the key and share exchange before training: (the round, the training messages
    for the lenders that shared, why setup failed or "", the lenders lost on the way)."""
    if not fed.cfg.secure_aggregation:
        return None, messages, "", []
    secure = SecureRound(
        fed.grid,
        rnd,
        ConfigRecord({**dict(fed.config), "server-round": rnd}),
        fed.cfg.max_update_norm,
        lambda node: fed.lender_of_node[node],
        fed.keeper.run,
        fed.keeper.key,
    )
    setup_failure = ""
    try:
        messages = secure.prepare(messages)
    except SecAggError as exc:  # too few lenders to mask: nobody trains this round
        setup_failure, messages = str(exc), []
        # Every lender asked is left out, those still in the setup for its failure: the verifier needs an outcome
        # for each lender of the round's roster (an honest run failed verification when lenders had failed to
        # advertise keys: tests/test_redteam_procs.py).
        for lender in secure.participants:
            secure.dropped.setdefault(lender, f"secure aggregation did not start: {exc}")
    if secure.roster:
        fed.keeper.secagg_roster(rnd, secure.roster)
    left_out: list[Rejection] = [(lender, why, None) for lender, why in sorted(secure.dropped.items())]
    return secure, messages, setup_failure, left_out
