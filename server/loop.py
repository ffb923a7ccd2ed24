"""The coordinator's federated loop, on top of a Flower strategy.

We drive the rounds ourselves instead of `Strategy.start` so that every reply passes the message inspector
before aggregation, replies are aggregated in lender order (same seed, same numbers in any runtime), lenders that
decline are left out, the run ends when no lender trains, and everything the coordinator asks and receives goes
into the signed ledger: each round's roster, every lender's signed update, refusal and evaluation, every lender
left out and why, each aggregate, and at the end every lender's own signed count of its releases. The run folder
is then derived from the ledger (federation/audit_trail/derive.py), so the verifier can derive it again.
The server never imports the data loaders: it learns the feature list from the lenders' manifests.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation.audit_trail import checkpoint
from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import arrays_hash, canonical
from federation.audit_trail.derive import run_files
from federation.audit_trail.keys import keys_dir_for
from federation.audit_trail.report import write_report
from federation.audit_trail.run_view import RunView, global_scores, stop_reason, weighted_mean
from federation.config import RunConfig
from federation.errors import ConfigError, FedCreditError
from federation.lender_policy import effective_delta
from federation.messages import (
    ARRAYS,
    CONFIG,
    MASKED,
    QUERY_FINAL,
    QUERY_MANIFEST,
    ReplyRejected,
    inspect_reply,
    numpy_arrays,
    run_config_record,
    salvage_train_reply,
)
from federation.metrics import METRICS
from federation.model import array_shapes, build_model
from federation.privacy.accountant import epsilon, epsilons
from federation.privacy.events import PrivacyEvent
from federation.privacy.lender_level_mechanism import update_norm
from federation.privacy.noise import noise_source
from federation.runfolder import RunFolder, default_run_dir
from federation.secagg import SecAggError
from server.ledger_keeper import AttestationRejected, LedgerKeeper
from server.lender_dp import LenderLevelDP, known_sampling_epsilon
from server.secure_rounds import SecureRound
from server.strategies import make_strategy

log = logging.getLogger("fedcredit.server")
TIMEOUT_S = 3600.0


class RunFailed(FedCreditError):
    """The federation could not complete (a lender failed or broke the message contract)."""


@dataclass
class RoundSummary:
    round: int
    trained: int
    declined: int
    global_metrics: dict[str, float]
    max_epsilon: float
    seconds: float


@dataclass
class RunRecord:
    """What the coordinator keeps while the run goes (all of it is also in the ledger)."""

    manifests: dict[int, dict] = field(default_factory=dict)  # lender -> its signed manifest body
    releases: dict[int, list[dict]] = field(default_factory=dict)  # lender -> its distinct signed update bodies
    rounds: list[RoundSummary] = field(default_factory=list)
    stop: dict = field(default_factory=dict)  # {} or {"kind", "round", "reason"}
    model_hash: str = ""

    def events(self, lender: int) -> list[PrivacyEvent]:
        return [PrivacyEvent.from_dict(e) for body in self.releases.get(lender, []) for e in body["events"]]


def _wait_for_nodes(grid: Grid, count: int, timeout: float = 120.0) -> list[int]:
    """One SuperNode per lender: wait for `count` of them, and refuse a federation of another size."""
    deadline = time.time() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.time() > deadline:
            raise RunFailed(
                f"only {len(nodes)} SuperNode(s) connected within {timeout:.0f} s, but the run has {count} lenders: "
                f"set lenders={len(nodes)} (flwr run . --run-config 'lenders={len(nodes)}') or start {count} SuperNodes"
            )
        time.sleep(0.2)
    if len(nodes) > count:
        raise RunFailed(
            f"{len(nodes)} SuperNodes are connected but the run has {count} lenders: set lenders={len(nodes)}"
        )
    return nodes


def _inspect_all(replies: list[Message], shapes=None) -> list[tuple[Message, dict]]:
    try:
        return [(msg, inspect_reply(msg, shapes)) for msg in replies]
    except ReplyRejected as exc:
        raise RunFailed(str(exc)) from None


def collect_manifests(grid: Grid, cfg: RunConfig, nodes: list[int]) -> dict[int, tuple[int, dict, dict | None]]:
    """Ask every lender for its manifest. Returns node id -> (lender id, manifest, signed attestation)."""
    content = RecordDict({CONFIG: run_config_record(cfg)})
    messages = [Message(content, dst_node_id=node, message_type=QUERY_MANIFEST) for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=TIMEOUT_S))
    if len(replies) != len(nodes):
        raise RunFailed(f"{len(nodes) - len(replies)} lender(s) did not send a manifest")
    out = {}
    for msg, plain in _inspect_all(replies):
        manifest = plain["manifest"]
        out[msg.metadata.src_node_id] = (manifest["lender"], manifest, plain["attestation"])
    lenders = sorted(lender for lender, _, _ in out.values())
    if lenders != list(range(cfg.lenders)):
        raise RunFailed(f"lenders reported ids {lenders}; expected 0..{cfg.lenders - 1}")
    for what in ("features", "card_sha256"):
        if len({str(m[what]) for _, m, _ in out.values()}) != 1:
            raise RunFailed(
                f"lenders disagree on their {'encoded feature list' if what == 'features' else 'dataset card'}; "
                "they must use the same dataset card"
            )
    return out


def run_federation(
    grid: Grid, cfg: RunConfig, on_round: Callable[[RoundSummary], None] | None = None, resume: bool = False
) -> Path:
    """Run all rounds and write the run folder. Returns its path. With `resume`, finish the run that
    a killed coordinator left in `cfg.output_dir`'s staging folder, from its last checkpoint."""
    if not cfg.output_dir:
        cfg = cfg.replace(output_dir=str(default_run_dir()))
    keys_dir = keys_dir_for(cfg.output_dir, cfg.keys_dir)
    new_keys = not keys_dir.exists()
    folder = RunFolder.adopt(cfg.output_dir) if resume else RunFolder(cfg.output_dir)
    try:
        checkpoint_key = checkpoint.load_or_create_key(keys_dir)
        state = None
        if resume:
            if cfg.strategy == "fedadam" or (cfg.dp and cfg.dp_level == "lender"):
                raise ConfigError(
                    "resume supports FedAvg, FedProx, FedMedian and FedTrimmedAvg at record level "
                    "(FedAdam's moments and lender-level noise state are not checkpointed)"
                )
            keeper = LedgerKeeper.resume(folder, cfg)
            state = checkpoint.load(folder.staging, checkpoint_key, keeper.run)
            keeper.resumed(state["round"] + 1)
        else:
            keeper = LedgerKeeper(folder, cfg)
        record, arrays, model = _run(grid, cfg, folder, on_round, keeper, checkpoint_key, state)
        _collect_finals(grid, cfg, keeper, record)
        _finish(folder, cfg, keeper, record, arrays, model)
        return folder.commit()
    except BaseException:
        if resume:  # keep what the killed run left: it may be resumed again once the cause is fixed
            raise
        folder.abort()
        if new_keys:  # keys made for a run that did not finish sign nothing: leave no trace of it
            shutil.rmtree(keys_dir, ignore_errors=True)
        raise


def _run(
    grid: Grid,
    cfg: RunConfig,
    folder: RunFolder,
    on_round,
    keeper: LedgerKeeper,
    checkpoint_key: bytes,
    state: dict | None = None,
):
    record = RunRecord()
    nodes = _wait_for_nodes(grid, cfg.lenders)
    by_node = collect_manifests(grid, cfg, nodes)
    for lender, manifest, attestation in sorted(by_node.values(), key=lambda item: item[0]):
        keeper.manifest(lender, manifest, attestation, append=state is None)
    view = RunView(keeper.entries())
    record.manifests = dict(view.manifests)
    features = record.manifests[0]["features"]
    model = build_model(cfg.model, len(features), cfg.hidden, seed=cfg.seed)
    shapes = array_shapes(model)
    masked_shape = {MASKED: (sum(math.prod(shape) for shape in shapes.values()) + 1,)}  # secure aggregation's vector
    strategy = make_strategy(cfg)
    random.seed(cfg.seed)  # Flower's strategies draw lenders with the random module: same seed, same lenders
    config = run_config_record(cfg)
    first_round = 1
    if state is not None:  # the same request as before the crash, so that lenders resend what they sent
        model.load_state_dict({k: torch.from_numpy(v) for k, v in checkpoint.decode_arrays(state["arrays"]).items()})
        record.releases = {lender: view.releases(lender) for lender in view.lenders()}
        record.rounds = [RoundSummary(**r) for r in state["rounds"]]
        random.setstate(_random_state(state["random"]))
        first_round = state["round"] + 1
    arrays = ArrayRecord(model.state_dict())

    def lender_of(msg: Message) -> int:
        return by_node[msg.metadata.src_node_id][0]

    lender_dp = LenderLevelDP(cfg) if cfg.dp and cfg.dp_level == "lender" else None
    for rnd in range(first_round, cfg.rounds + 1):
        start = time.time()
        if lender_dp and not lender_dp.admits(rnd):
            record.stop = {"kind": "lender_level_budget", "round": rnd}
            record.stop["reason"] = stop_reason(record.stop, cfg.epsilon)
            log.warning(record.stop["reason"])
            break
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(dict(config)), grid))
        if lender_dp:
            sampled = set(lender_dp.sample(sorted(lender for lender, _, _ in by_node.values())))
            messages = [m for m in messages if by_node[m.metadata.dst_node_id][0] in sampled]
        asked_messages = list(messages)
        keeper.round_started(
            rnd, sorted(by_node[m.metadata.dst_node_id][0] for m in messages), _mechanism(cfg, lender_dp)
        )
        secure, setup_failure, left_out = None, "", []
        if cfg.secure_aggregation:
            secure = SecureRound(
                grid,
                rnd,
                ConfigRecord({**dict(config), "server-round": rnd}),
                cfg.max_update_norm,
                lambda node: by_node[node][0],
                keeper.run,
                keeper.key,
            )
            try:
                messages = secure.prepare(messages)
            except SecAggError as exc:  # too few lenders to mask: nobody trains this round
                setup_failure, messages = str(exc), []
            if secure.roster:
                keeper.secagg_roster(rnd, secure.roster)
            left_out = [(lender, why, None) for lender, why in sorted(secure.dropped.items())]
        replies = list(grid.send_and_receive(messages, timeout=TIMEOUT_S)) if messages else []
        asked = {by_node[m.metadata.dst_node_id][0] for m in messages}
        checked, rejected = _screen_train_replies(replies, masked_shape if secure else shapes, arrays, cfg, lender_of)
        answered = {lender_of(msg) for msg, _ in checked} | {lender for lender, _, _ in rejected}
        rejected += [(lender, "no reply (the lender failed or timed out)", None) for lender in sorted(asked - answered)]
        rejected += left_out
        trained = [msg for msg, plain in checked if not plain["metrics"].get("declined")]
        # Every reply that carries a valid release is accounted and recorded, accepted or not: a lender whose update
        # is rejected still spent its budget. A lender that failed released nothing.
        releases = [(lender_of(m), p) for m, p in checked] + [(lender, p) for lender, _, p in rejected if p is not None]
        declined = 0
        for lender, plain in sorted(releases, key=lambda item: item[0]):
            try:
                body = keeper.reply(rnd, lender, plain)
            except AttestationRejected as exc:
                raise RunFailed(str(exc)) from None
            declined += body["type"] == L.LENDER_REFUSAL
            _account(record, cfg, lender, rnd, body)
        for lender, reason, _ in sorted(rejected, key=lambda item: item[0]):
            log.warning("round %d: lender %d left out: %s", rnd, lender, reason)
            keeper.rejected(rnd, lender, reason)
        max_eps = max(
            (b["epsilon"] for bodies in record.releases.values() for b in bodies[-1:] if b.get("epsilon") is not None),
            default=0.0,
        )
        # Stop only when every lender of the federation was asked and declined: lenders drawn (lenders-per-round,
        # or sampled at lender level) that decline say nothing about the others.
        everyone = not cfg.lenders_per_round and not lender_dp
        if everyone and messages and not trained and not rejected and not setup_failure:
            record.stop = {"kind": "refused", "round": rnd}
            record.stop["reason"] = stop_reason(record.stop)
            log.warning(record.stop["reason"])
            break
        if lender_dp:
            arrays = lender_dp.aggregate(rnd, arrays, [msg.content[ARRAYS] for msg in trained])
            event = lender_dp.budget.events[-1]
            max_eps = lender_dp.budget.spent()
            keeper.aggregate(
                rnd,
                [lender_of(m) for m in trained],
                arrays,
                {"noise_event": event.to_dict(), "delta": lender_dp.budget.delta, "epsilon": max_eps},
            )
        else:
            new_arrays, why_not, weights = (
                (None, setup_failure, None) if setup_failure else _aggregate(rnd, arrays, trained, strategy, secure)
            )
            how = {"strategy": cfg.strategy, "secure_aggregation": cfg.secure_aggregation}
            aggregated = [lender_of(m) for m in trained]
            if secure is not None:
                if secure.unmask_request:
                    how["unmask"] = secure.unmask_request
                    how["confirmations"] = {str(k): v for k, v in sorted(secure.confirmations.items())}
                late = {lender: why for lender, why in secure.dropped.items() if lender in aggregated}
                for lender, why in sorted(late.items()):  # sent an update the unmasking could not use
                    keeper.rejected(rnd, lender, why)
                aggregated = [lender for lender in aggregated if lender not in late]
            if weights is not None:
                how["weight_sum"] = weights
            if new_arrays is None:
                # The global model stays as it was; the round still counts, is evaluated and checkpointed.
                log.warning("round %d: the model is unchanged: %s", rnd, why_not)
                keeper.aggregate(rnd, [], arrays, {**how, "skipped": True, "reason": why_not})
            else:
                arrays = new_arrays
                keeper.aggregate(rnd, aggregated, arrays, how)
        roster = sorted(by_node[m.metadata.dst_node_id][0] for m in asked_messages)
        evaluators = sorted(n for n in by_node if not cfg.lenders_per_round or by_node[n][0] in roster)
        scores = _evaluate(grid, rnd, arrays, config, evaluators, {n: v[0] for n, v in by_node.items()}, keeper)
        seconds = time.time() - start
        keeper.round_finished(rnd, seconds)
        summary = RoundSummary(rnd, len(trained), declined, scores, max_eps, seconds)
        record.rounds.append(summary)
        if not lender_dp:
            checkpoint.save(
                folder.staging,
                checkpoint_key,
                keeper.run,
                {
                    "round": rnd,
                    "arrays": checkpoint.encode_arrays(numpy_arrays(arrays)),
                    "rounds": [r.__dict__ for r in record.rounds],
                    "random": _jsonable(random.getstate()),
                },
            )
        if on_round:
            on_round(summary)
    record.model_hash = arrays_hash(numpy_arrays(arrays))
    return record, arrays, (model, lender_dp)


def _account(record: RunRecord, cfg: RunConfig, lender: int, rnd: int, body: dict) -> None:
    """Check a lender's signed privacy claim against what its own signed releases support, and keep the release.

    The lender's delta must follow its signed policy (or the coordinator's stricter request), its budget be the one
    asked for, its release number follow its previous one, and its epsilon equal the composition of all its
    releases; a lender that claims otherwise breaks the contract and stops the run."""
    mine = record.releases.setdefault(lender, [])
    if body["type"] == L.LENDER_UPDATE:
        if any(canonical(body) == canonical(b) for b in mine):
            return  # resent after a resume: the same bytes, the same release
        if body.get("release") != len(mine) + 1:
            raise RunFailed(
                f"round {rnd}: lender {lender} numbers its release {body.get('release')}, "
                f"its previous one was {len(mine)}"
            )
    if cfg.dp and cfg.dp_level == "record":
        manifest = record.manifests[lender]
        expected = effective_delta(cfg.delta, manifest["policy"].get("delta", 0.0), int(manifest["train_records"]))
        if not math.isclose(float(body.get("delta") or -1), expected, rel_tol=1e-9):
            raise RunFailed(f"round {rnd}: lender {lender} accounts at delta {body.get('delta')}, expected {expected}")
        if body.get("budget") != cfg.budget_for(lender):
            raise RunFailed(
                f"round {rnd}: lender {lender} states budget {body.get('budget')}, the run asked for "
                f"{cfg.budget_for(lender)}"
            )
        events = record.events(lender)
        if body["type"] == L.LENDER_UPDATE:
            if len(body.get("events", [])) != 1:
                raise RunFailed(f"round {rnd}: lender {lender}'s update must carry exactly its round's event")
            events.append(PrivacyEvent.from_dict(body["events"][0]))
        claim = body.get("epsilon") if body["type"] == L.LENDER_UPDATE else body.get("epsilon_spent")
        eps = epsilon(events, expected, cfg.accountant)
        if claim is None or not math.isclose(eps, float(claim), rel_tol=1e-6, abs_tol=1e-9):
            raise RunFailed(f"round {rnd}: lender {lender} claims epsilon {claim}, its signed releases give {eps}")
    if body["type"] == L.LENDER_UPDATE:
        mine.append(body)


def _collect_finals(grid: Grid, cfg: RunConfig, keeper: LedgerKeeper, record: RunRecord) -> None:
    """Each lender's own signed count of its releases: a release left out of the ledger cannot go unnoticed."""
    nodes = sorted(grid.get_node_ids())
    content = RecordDict({CONFIG: run_config_record(cfg)})
    replies = list(
        grid.send_and_receive(
            [Message(content, dst_node_id=n, message_type=QUERY_FINAL) for n in nodes], timeout=TIMEOUT_S
        )
    )
    answered = set()
    for reply in replies:
        try:
            plain = inspect_reply(reply)
        except ReplyRejected as exc:
            log.warning("a lender sent no final statement: %s", exc)
            continue
        lender = (plain["attestation"] or {}).get("body", {}).get("lender")
        if lender not in record.manifests or lender in answered:
            raise RunFailed(f"a final statement names lender {lender!r}")
        try:
            body = keeper.final(lender, plain["attestation"])
        except AttestationRejected as exc:
            raise RunFailed(str(exc)) from None
        distinct = len(record.releases.get(lender, []))
        if body["releases"] != distinct:
            raise RunFailed(
                f"lender {lender} counts {body['releases']} releases in this run; the coordinator recorded {distinct}"
            )
        answered.add(lender)
    for lender in sorted(set(record.manifests) - answered):
        keeper.rejected(None, lender, "no final statement (the lender failed or timed out)")


def _finish(
    folder: RunFolder, cfg: RunConfig, keeper: LedgerKeeper, record: RunRecord, arrays: ArrayRecord, model_and_dp
) -> None:
    model, lender_dp = model_and_dp
    model.load_state_dict(arrays.to_torch_state_dict())
    torch.save(model.state_dict(), folder.path("model.pt"))
    view = RunView(keeper.entries())
    last = [a for a in view.complete_rounds()][-1:]
    finish = {
        "rounds_completed": len(view.complete_rounds()),
        "stop": {k: record.stop[k] for k in ("kind", "round")} if record.stop else {},
        "stopped_early": record.stop.get("reason", ""),
        "model_hash": record.model_hash,
        "model_file_sha256": hashlib.sha256(folder.path("model.pt").read_bytes()).hexdigest(),
        "final_metrics": global_scores(last[0]) if last else {k: None for k in METRICS},
        "privacy": privacy_summary(cfg, record, view, lender_dp),
    }
    files = run_files(view, finish)
    for name, data in files.items():
        folder.path(name).write_bytes(data)
    finish["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    finish["files"]["model.pt"] = finish["model_file_sha256"]
    keeper.finished(finish)
    write_report(folder.staging, keeper.key)
    (folder.staging / checkpoint.FILE_NAME).unlink(missing_ok=True)  # a finished run has nothing to resume


def _evaluate(
    grid: Grid,
    rnd: int,
    arrays: ArrayRecord,
    config: ConfigRecord,
    nodes: list[int],
    lender_of_node: dict[int, int],
    keeper: LedgerKeeper,
) -> dict:
    """Each lender of `nodes` scores the global model on its own test records and signs its scores; a lender that
    fails is recorded as such (the verifier requires a score or a recorded failure from each of them, so the
    coordinator cannot leave out the lenders the model serves worst). Returns the test-size-weighted mean."""
    content = RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({**dict(config), "server-round": rnd})})
    messages = [Message(content, dst_node_id=node, message_type="evaluate") for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=TIMEOUT_S))
    model_hash = arrays_hash(numpy_arrays(arrays))
    bodies, answered = [], set()
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


def _aggregate(rnd: int, arrays: ArrayRecord, trained: list[Message], strategy, secure: SecureRound | None):
    """The round's new global model, "" and (secure aggregation) the unmasked weight sum; or None and why there is
    none (the model then stays)."""
    if not trained:
        return None, "no usable update (every lender failed, was rejected or declined)", None
    if secure:
        try:
            new, weights = secure.aggregate(arrays, trained)
            return new, "", weights
        except SecAggError as exc:
            return None, str(exc), None
    new_arrays, _ = strategy.aggregate_train(rnd, trained)
    if new_arrays is None:
        raise RunFailed(f"round {rnd}: aggregation produced no model")
    return new_arrays, "", None


def _screen_train_replies(replies, shapes, global_arrays, cfg: RunConfig, lender_of):
    """Split training replies into usable ones and rejected ones (lender, reason, salvaged content).

    Rejected before aggregation: a lender's error, arrays that break the contract (shape, NaN, inf),
    and updates farther than max-update-norm from the global model (an absurd update is not a model).
    """
    global_np = numpy_arrays(global_arrays)
    checked, rejected = [], []
    for msg in replies:
        lender = lender_of(msg)
        try:
            plain = inspect_reply(msg, shapes)
        except ReplyRejected as exc:
            rejected.append((lender, str(exc), salvage_train_reply(msg)))
            continue
        if (
            "arrays" in plain and cfg.max_update_norm and not cfg.secure_aggregation
        ):  # a masked update is screened by its lender
            norm = update_norm(plain["arrays"], global_np)
            if not norm <= cfg.max_update_norm:
                rejected.append(
                    (lender, f"update norm {norm:.3g} exceeds max-update-norm {cfg.max_update_norm:g}", plain)
                )
                continue
        checked.append((msg, plain))
    return sorted(checked, key=lambda item: lender_of(item[0])), rejected


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _random_state(value):
    return tuple(_random_state(v) for v in value) if isinstance(value, list) else value


def _mechanism(cfg: RunConfig, lender_dp: LenderLevelDP | None) -> dict:
    """What the coordinator asks for this round (each lender checks it against its own policy)."""
    if not cfg.dp:
        return {"dp": False}
    out = {
        "dp": True,
        "granularity": cfg.dp_level,
        "accountant": cfg.accountant,
        "clip_norm": cfg.clip_norm,
        "noise_multiplier": cfg.noise_multiplier or None,
        "delta": cfg.delta or None,
        "reproducible_noise_not_private": cfg.reproducible_noise_not_private,
    }
    if lender_dp:
        out.update(
            {
                "noise_multiplier": lender_dp.budget.sigma,
                "lender_sample_rate": lender_dp.q,
                "noise_source": noise_source(cfg.reproducible_noise_not_private),
            }
        )
    return out


def privacy_summary(cfg: RunConfig, record: RunRecord, view: RunView, lender_dp: LenderLevelDP | None) -> dict:
    """Per lender (or the federation, at lender level): final epsilon under both of Opacus' accountants."""
    if not cfg.dp:
        return {"dp": False}
    out = {"dp": True, "granularity": cfg.dp_level, "accountant": cfg.accountant, "units": {}}
    if lender_dp is not None:
        events, delta = lender_dp.budget.events, lender_dp.budget.delta
        both = epsilons(events, delta) if events else {"rdp": 0.0, "prv": 0.0}
        sampled = {lender: sum(lender in a.roster for a in view.complete_rounds()) for lender in view.lenders()}
        known = {
            str(lender): known_sampling_epsilon(float(lender_dp.budget.sigma), k, delta, cfg.accountant)
            for lender, k in sampled.items()
        }
        out["units"]["federation"] = {
            "budget": cfg.epsilon,
            "delta": delta,
            "epsilon": both[cfg.accountant],
            "epsilon_rdp": both["rdp"],
            "epsilon_prv": both["prv"],
            "rounds_released": len(events),
            "steps": len(events),
            "noise_multiplier": lender_dp.budget.sigma,
            "sample_rate": lender_dp.q,
            "clip_norm": cfg.clip_norm,
            "noise": noise_source(cfg.reproducible_noise_not_private),
            "rounds_sampled": {str(k): v for k, v in sampled.items()},
            "epsilon_known_sampling": known,
            "epsilon_known_sampling_max": max(known.values(), default=0.0),
        }
        return out
    for lender in range(cfg.lenders):
        bodies = record.releases.get(lender, [])
        events = record.events(lender)
        manifest = record.manifests[lender]
        delta = effective_delta(cfg.delta, manifest["policy"].get("delta", 0.0), int(manifest["train_records"]))
        both = epsilons(events, delta) if events else {"rdp": 0.0, "prv": 0.0}
        out["units"][str(lender)] = {
            "budget": cfg.budget_for(lender),
            "delta": delta,
            "epsilon": both[cfg.accountant],
            "epsilon_rdp": both["rdp"],
            "epsilon_prv": both["prv"],
            "rounds_released": len(events),
            "steps": sum(e.steps for e in events),
            "noise_multiplier": events[-1].noise_multiplier if events else None,
            "sample_rate": events[-1].sample_rate if events else None,
            "clip_norm": cfg.clip_norm,
            "noise": bodies[-1].get("noise") if bodies else None,
        }
    return out
