"""Evaluation of each round's global model by the lenders, on their own test records.

Each lender scores the model and signs its scores; a lender that fails is recorded as such (the verifier requires a
score or a recorded failure from each of them, so the coordinator cannot leave out the lenders the model serves
worst).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation.audit_trail.canonical import arrays_hash
from federation.audit_trail.run_view import weighted_mean
from federation.config import RunConfig
from federation.messages import ARRAYS, CONFIG, ReplyRejected, inspect_reply, numpy_arrays
from federation.metrics import METRICS
from server.errors import RunFailed
from server.ledger_keeper import AttestationRejected, LedgerKeeper
from server.messaging import ask


def evaluating_nodes(cfg: RunConfig, lender_of_node: dict[int, int], roster: list[int]) -> list[int]:
    """Who scores a round's model: every lender, or only the round's roster when lenders are drawn per round."""
    return sorted(n for n in lender_of_node if not cfg.lenders_per_round or lender_of_node[n] in roster)


def evaluate_round(
    grid: Grid,
    rnd: int,
    arrays: ArrayRecord,
    config: ConfigRecord,
    nodes: list[int],
    lender_of_node: dict[int, int],
    keeper: LedgerKeeper,
) -> dict[str, float | None]:
    """Each lender of `nodes` scores the global model; returns the test-size-weighted mean of their scores."""
    content = RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({**dict(config), "server-round": rnd})})
    replies = ask(grid, [Message(content, dst_node_id=node, message_type="evaluate") for node in nodes])
    model_hash = arrays_hash(numpy_arrays(arrays))
    bodies: list[dict] = []
    answered: set[int] = set()
    for msg in sorted(replies, key=lambda m: lender_of_node[m.metadata.src_node_id]):
        lender = lender_of_node[msg.metadata.src_node_id]
        answered.add(lender)
        try:
            plain = inspect_reply(msg)
        except ReplyRejected as exc:
            keeper.rejected(rnd, lender, f"evaluation: {exc}", stage="evaluate")
            continue
        try:
            bodies.append(keeper.evaluation(rnd, lender, plain["attestation"], model_hash))
        except AttestationRejected as exc:
            raise RunFailed(str(exc)) from None
    for node in nodes:
        lender = lender_of_node[node]
        if lender not in answered:
            keeper.rejected(rnd, lender, "evaluation: no reply (the lender failed or timed out)", stage="evaluate")
    weights = [b["num_examples"] for b in bodies]
    return {k: weighted_mean([b.get(k) for b in bodies], weights) for k in METRICS}
