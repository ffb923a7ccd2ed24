"""The coordinator's federated loop, on top of a Flower strategy.

We drive the rounds ourselves instead of `Strategy.start` so that every reply passes the message
inspector before aggregation, replies are aggregated in lender order (same seed, same numbers in
any runtime), lenders that decline for budget reasons are left out, the run ends when no lender can
train, and per-lender metrics and epsilons are kept, not only their averages.
The server never imports the data loaders: it learns the feature list from the lenders' manifests.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation import __version__
from federation.config import RunConfig
from federation.errors import ConfigError, FedCreditError
from federation.messages import (ARRAYS, CONFIG, MASKED, QUERY_MANIFEST, RESUMED, ReplyRejected, inspect_reply,
                                 numpy_arrays, run_config_record, salvage_train_reply)
from federation.metrics import METRICS, weighted_mean
from federation.model import array_shapes, build_model
from federation.privacy.accountant import default_delta, epsilon, epsilons
from federation.privacy.events import PrivacyEvent
from federation.privacy.noise import noise_source
from federation.runfolder import EPSILON_COLUMNS, METRICS_COLUMNS, RunFolder, default_run_dir
from federation.audit_trail import checkpoint
from federation.audit_trail.canonical import arrays_hash
from federation.audit_trail.keys import keys_dir_for
from federation.audit_trail.report import write_report
from server.ledger_keeper import AttestationRejected, LedgerKeeper
from federation.privacy.lender_level import update_norm
from federation.secagg import SecAggError
from server.lender_dp import FEDERATION, LenderLevelDP
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
    manifests: dict[int, dict] = field(default_factory=dict)
    events: list[PrivacyEvent] = field(default_factory=list)
    deltas: dict[int, float] = field(default_factory=dict)
    rejections: list[dict] = field(default_factory=list)
    model_hash: str = ""
    metrics_rows: list[dict] = field(default_factory=list)
    epsilon_rows: list[dict] = field(default_factory=list)
    rounds: list[RoundSummary] = field(default_factory=list)
    stopped_early: str = ""


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
        raise RunFailed(f"{len(nodes)} SuperNodes are connected but the run has {count} lenders: set lenders={len(nodes)}")
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
    features = {tuple(m["features"]) for _, m, _ in out.values()}
    if len(features) != 1:
        raise RunFailed("lenders disagree on the encoded feature list; they must use the same dataset card")
    return out


def run_federation(grid: Grid, cfg: RunConfig,
                   on_round: Callable[[RoundSummary], None] | None = None, resume: bool = False) -> Path:
    """Run all rounds and write the run folder. Returns its path. With `resume`, finish the run that
    a killed coordinator left in `cfg.output_dir`'s staging folder, from its last checkpoint."""
    if not cfg.output_dir:  # resolved before lenders see the config: it locates their keys
        cfg = cfg.replace(output_dir=str(default_run_dir()))
    keys_dir = keys_dir_for(cfg.output_dir, cfg.keys_dir)
    new_keys = not keys_dir.exists()
    folder = RunFolder.adopt(cfg.output_dir) if resume else RunFolder(cfg.output_dir)
    try:
        checkpoint_key = checkpoint.load_or_create_key(keys_dir)
        state = None
        if resume:
            if cfg.strategy == "fedadam" or (cfg.dp and cfg.dp_level == "lender"):
                raise ConfigError("resume supports FedAvg, FedProx, FedMedian and FedTrimmedAvg at record level "
                                  "(FedAdam's moments and lender-level noise state are not checkpointed)")
            keeper = LedgerKeeper.resume(folder, cfg)
            state = checkpoint.load(folder.staging, checkpoint_key, keeper.run)
            keeper.resumed(state["round"] + 1)
        else:
            keeper = LedgerKeeper(folder, cfg)
        record = _run(grid, cfg, folder, on_round, keeper, checkpoint_key, state)
        _write_outputs(folder, cfg, record)
        privacy = privacy_summary(cfg, record)
        last = [r for r in record.metrics_rows if r["lender"] == "global"][-1:] or [{}]
        keeper.finished({
            "rounds_completed": len(record.rounds), "stopped_early": record.stopped_early,
            "model_hash": record.model_hash, "final_metrics": {k: last[0].get(k) for k in METRICS},
            "epsilon": {unit: v["epsilon"] for unit, v in privacy.get("units", {}).items()},
        })
        write_report(folder.staging, keeper.key)
        (folder.staging / checkpoint.FILE_NAME).unlink(missing_ok=True)  # a finished run has nothing to resume
        return folder.commit()
    except BaseException:
        if resume:  # keep what the killed run left: it may be resumed again once the cause is fixed
            raise
        folder.abort()
        if new_keys:  # keys made for a run that did not finish sign nothing: leave no trace of it
            shutil.rmtree(keys_dir, ignore_errors=True)
        raise


def _run(grid: Grid, cfg: RunConfig, folder: RunFolder, on_round, keeper: LedgerKeeper, checkpoint_key: bytes,
         state: dict | None = None) -> RunRecord:
    record = RunRecord()
    nodes = _wait_for_nodes(grid, cfg.lenders)
    by_node = collect_manifests(grid, cfg, nodes)
    record.manifests = {lender: manifest for lender, manifest, _ in by_node.values()}
    for lender, manifest, attestation in sorted(by_node.values(), key=lambda item: item[0]):
        keeper.manifest(lender, manifest, attestation, append=state is None)
    features = record.manifests[0]["features"]
    model = build_model(cfg.model, len(features), cfg.hidden, seed=cfg.seed)
    shapes = array_shapes(model)
    masked_shape = {MASKED: (sum(math.prod(shape) for shape in shapes.values()),)}  # secure aggregation's one vector
    strategy = make_strategy(cfg)
    random.seed(cfg.seed)  # Flower's strategies draw lenders with the random module: same seed, same lenders
    config = run_config_record(cfg)
    first_round = 1
    if state is not None:
        config[RESUMED] = True
        model.load_state_dict({k: torch.from_numpy(v) for k, v in checkpoint.decode_arrays(state["arrays"]).items()})
        record = _record_from_state(state["record"])
        random.setstate(_random_state(state["random"]))
        first_round = state["round"] + 1
    arrays = ArrayRecord(model.state_dict())

    def lender_of(msg: Message) -> int:
        return by_node[msg.metadata.src_node_id][0]

    lender_dp = LenderLevelDP(cfg) if cfg.dp and cfg.dp_level == "lender" else None
    if lender_dp:
        record.deltas[FEDERATION] = lender_dp.budget.delta
    for rnd in range(first_round, cfg.rounds + 1):
        start = time.time()
        if lender_dp and not lender_dp.admits(rnd):
            record.stopped_early = f"round {rnd} would take the federation past epsilon {cfg.epsilon} (lender-level)"
            log.warning(record.stopped_early)
            break
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(dict(config)), grid))
        if lender_dp:
            sampled = set(lender_dp.sample(sorted(lender for lender, _, _ in by_node.values())))
            messages = [m for m in messages if by_node[m.metadata.dst_node_id][0] in sampled]
        keeper.round_started(rnd, sorted(by_node[m.metadata.dst_node_id][0] for m in messages), _mechanism(cfg, lender_dp))
        secure, setup_failure, left_out = None, "", []
        if cfg.secure_aggregation:
            secure = SecureRound(grid, rnd, ConfigRecord({**dict(config), "server-round": rnd}), cfg.max_update_norm,
                                 lambda node: by_node[node][0], {lender: int(m["train_records"]) for lender, m in record.manifests.items()})
            try:
                messages = secure.prepare(messages)
            except SecAggError as exc:  # too few lenders to mask: nobody trains this round
                setup_failure, messages = str(exc), []
            left_out = [(lender, why, None) for lender, why in sorted(secure.dropped.items())]
        replies = list(grid.send_and_receive(messages, timeout=TIMEOUT_S)) if messages else []
        asked = {by_node[m.metadata.dst_node_id][0] for m in messages}
        checked, rejected = _screen_train_replies(replies, masked_shape if secure else shapes, arrays, cfg, lender_of)
        answered = {lender_of(msg) for msg, _ in checked} | {lender for lender, _, _ in rejected}
        rejected += [(lender, "no reply (the lender failed or timed out)", None) for lender in sorted(asked - answered)]
        rejected += left_out
        trained = [msg for msg, plain in checked if not plain["metrics"].get("declined")]
        # Every reply that carries a valid release is accounted and recorded, accepted or not: a lender
        # whose update is rejected still spent its budget. A lender that failed released nothing.
        releases = [(lender_of(m), p) for m, p in checked] + [(lender, p) for lender, _, p in rejected if p is not None]
        for lender, plain in sorted(releases, key=lambda item: item[0]):
            event = None
            if cfg.dp and not lender_dp:
                record.epsilon_rows.append(_account_reply(record, cfg, lender, rnd, plain["metrics"]))
                event = record.events[-1].to_dict() if not plain["metrics"].get("declined") else None
            try:
                keeper.reply(rnd, lender, plain, event)
            except AttestationRejected as exc:
                raise RunFailed(str(exc)) from None
        for lender, reason, _ in sorted(rejected, key=lambda item: item[0]):
            log.warning("round %d: lender %d left out: %s", rnd, lender, reason)
            keeper.rejected(rnd, lender, reason)
            record.rejections.append({"round": rnd, "lender": lender, "reason": reason})
        if lender_dp:
            arrays = lender_dp.aggregate(rnd, arrays, [msg.content[ARRAYS] for msg in trained])
            event = lender_dp.budget.events[-1]
            record.events.append(event)
            keeper.aggregate(rnd, [lender_of(m) for m in trained], arrays, {"noise_event": event.to_dict(), "delta": lender_dp.budget.delta})
            record.epsilon_rows.append({
                "lender": "federation", "round": rnd, "epsilon": lender_dp.budget.spent(), "delta": lender_dp.budget.delta,
                "sigma": event.noise_multiplier, "sample_rate": event.sample_rate, "steps": event.steps,
                "budget": cfg.epsilon, "declined": 0, "granularity": "lender", "sampled": len(trained),
            })
        else:
            if not trained and not rejected and not setup_failure:
                record.stopped_early = f"no lender could train in round {rnd} without exceeding its budget"
                log.warning(record.stopped_early)
                break
            new_arrays, why_not = (None, setup_failure) if setup_failure else _aggregate(rnd, arrays, trained, strategy, secure)
            how = {"strategy": cfg.strategy, "secure_aggregation": cfg.secure_aggregation}
            if new_arrays is None:
                # The global model stays as it was; the round still counts, is evaluated and checkpointed.
                log.warning("round %d: the model is unchanged: %s", rnd, why_not)
                keeper.aggregate(rnd, [], arrays, {**how, "skipped": True, "reason": why_not})
            else:
                arrays = new_arrays
                keeper.aggregate(rnd, [lender_of(m) for m in trained], arrays, how)
        train_loss = {lender_of(msg): plain["metrics"].get("train-loss", math.nan) for msg, plain in checked}

        per_lender, global_row = _evaluate(grid, strategy, rnd, arrays, config, lender_of, train_loss)
        record.metrics_rows.extend(per_lender + [global_row])
        eps_now = [r["epsilon"] for r in record.epsilon_rows if r["round"] == rnd]
        summary = RoundSummary(rnd, len(trained), len(checked) - len(trained),
                               {k: global_row[k] for k in METRICS}, max(eps_now) if eps_now else 0.0, time.time() - start)
        record.rounds.append(summary)
        if not lender_dp:
            checkpoint.save(folder.staging, checkpoint_key, keeper.run, {
                "round": rnd, "arrays": checkpoint.encode_arrays(numpy_arrays(arrays)),
                "record": _record_to_state(record), "random": _jsonable(random.getstate()),
            })
        if on_round:
            on_round(summary)
    record.model_hash = arrays_hash(numpy_arrays(arrays))
    model.load_state_dict(arrays.to_torch_state_dict())
    torch.save(model.state_dict(), folder.path("model.pt"))
    folder.write_json("model.json", {"model": cfg.model, "hidden": cfg.hidden, "features": features})
    return record


def _evaluate(grid: Grid, strategy, rnd: int, arrays: ArrayRecord, config: ConfigRecord, lender_of,
              train_loss: dict[int, float]) -> tuple[list[dict], dict]:
    """Each lender scores the global model on its own test records: one metrics row per lender, and the
    test-size-weighted mean of them as the "global" row."""
    messages = strategy.configure_evaluate(rnd, arrays, ConfigRecord(dict(config)), grid)
    replies = list(grid.send_and_receive(messages, timeout=TIMEOUT_S))
    evaluated = sorted(_inspect_all([m for m in replies if not m.has_error()]), key=lambda item: lender_of(item[0]))
    per_lender = []
    for msg, plain in evaluated:
        m, lender = plain["metrics"], lender_of(msg)
        per_lender.append({"round": rnd, "lender": lender, "num_examples": int(m["num-examples"]),
                           **{k: m.get(k, math.nan) for k in METRICS}, "train_loss": train_loss.get(lender, math.nan)})
    weights = [r["num_examples"] for r in per_lender]
    global_row = {"round": rnd, "lender": "global", "num_examples": sum(weights),
                  **{k: weighted_mean([r[k] for r in per_lender], weights) for k in METRICS},
                  "train_loss": weighted_mean([r["train_loss"] for r in per_lender], weights)}
    return per_lender, global_row


def _aggregate(rnd: int, arrays: ArrayRecord, trained: list[Message], strategy, secure: SecureRound | None):
    """The round's new global model and "", or None and why there is none (the model then stays)."""
    if not trained:
        return None, "no usable update (every lender failed, was rejected or declined)"
    if secure:
        try:
            return secure.aggregate(arrays, trained), ""
        except SecAggError as exc:
            return None, str(exc)
    new_arrays, _ = strategy.aggregate_train(rnd, trained)
    if new_arrays is None:
        raise RunFailed(f"round {rnd}: aggregation produced no model")
    return new_arrays, ""


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
        if "arrays" in plain and cfg.max_update_norm and not cfg.secure_aggregation:  # a masked update is screened by its lender
            norm = update_norm(plain["arrays"], global_np)
            if not norm <= cfg.max_update_norm:
                rejected.append((lender, f"update norm {norm:.3g} exceeds max-update-norm {cfg.max_update_norm:g}", plain))
                continue
        checked.append((msg, plain))
    return sorted(checked, key=lambda item: lender_of(item[0])), rejected


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _random_state(value):
    return tuple(_random_state(v) for v in value) if isinstance(value, list) else value


def _record_to_state(record: RunRecord) -> dict:
    return {"manifests": {str(k): v for k, v in record.manifests.items()}, "events": [e.to_dict() for e in record.events],
            "deltas": {str(k): v for k, v in record.deltas.items()}, "rejections": record.rejections,
            "metrics_rows": record.metrics_rows, "epsilon_rows": record.epsilon_rows,
            "rounds": [r.__dict__ for r in record.rounds], "stopped_early": record.stopped_early}


def _record_from_state(raw: dict) -> RunRecord:
    return RunRecord(manifests={int(k): v for k, v in raw["manifests"].items()},
                     events=[PrivacyEvent.from_dict(e) for e in raw["events"]],
                     deltas={int(k): v for k, v in raw["deltas"].items()}, rejections=raw["rejections"],
                     metrics_rows=raw["metrics_rows"], epsilon_rows=raw["epsilon_rows"],
                     rounds=[RoundSummary(**r) for r in raw["rounds"]], stopped_early=raw["stopped_early"])


def _mechanism(cfg: RunConfig, lender_dp: LenderLevelDP | None) -> dict:
    if not cfg.dp:
        return {"dp": False}
    out = {"dp": True, "granularity": cfg.dp_level, "accountant": cfg.accountant, "clip_norm": cfg.clip_norm,
           "noise_source": noise_source(cfg.secure_rng)}
    if lender_dp:
        out.update({"noise_multiplier": lender_dp.budget.sigma, "lender_sample_rate": lender_dp.q})
    return out


def _account_reply(record: RunRecord, cfg: RunConfig, lender: int, rnd: int, m: dict) -> dict:
    """Record the lender's release as an event and recompute its epsilon from all its events.

    The lender reports its epsilon too; a lender whose claim differs from what its recorded
    mechanism supports breaks the contract and stops the run.
    """
    delta = float(m["delta"])
    expected_delta = cfg.delta or default_delta(int(record.manifests[lender]["train_records"]))
    if not math.isclose(delta, expected_delta, rel_tol=1e-9):
        raise RunFailed(f"round {rnd}: lender {lender} accounts at delta {delta}, expected {expected_delta}")
    record.deltas[lender] = delta
    declined = bool(m.get("declined"))
    if not declined:
        record.events.append(PrivacyEvent(lender, rnd, float(m["noise-multiplier"]), float(m["sample-rate"]),
                                          int(m["steps"]), float(m["clip-norm"])))
    eps = epsilon([e for e in record.events if e.lender == lender], delta, cfg.accountant)
    if not math.isclose(eps, float(m["epsilon"]), rel_tol=1e-6, abs_tol=1e-9):
        raise RunFailed(f"round {rnd}: lender {lender} reported epsilon {m['epsilon']}, its recorded events give {eps}")
    return {"lender": lender, "round": rnd, "epsilon": eps, "delta": delta,
            "sigma": m.get("noise-multiplier", ""), "sample_rate": m.get("sample-rate", ""),
            "steps": 0 if declined else int(m["steps"]), "budget": m.get("epsilon-budget"),
            "declined": int(declined), "granularity": "record", "sampled": ""}


def privacy_summary(cfg: RunConfig, record: RunRecord) -> dict:
    """Per lender (or the federation, at lender level): final epsilon under both accountants."""
    if not cfg.dp:
        return {"dp": False}
    units = [FEDERATION] if cfg.dp_level == "lender" else list(range(cfg.lenders))
    out = {"dp": True, "granularity": cfg.dp_level, "accountant": cfg.accountant,
           "noise_source": noise_source(cfg.secure_rng), "units": {}}
    for unit in units:
        events = [e for e in record.events if e.lender == unit]
        delta = record.deltas.get(unit, cfg.delta)
        budget = cfg.epsilon if unit == FEDERATION else cfg.budget_for(unit)
        both = epsilons(events, delta) if events else {"rdp": 0.0, "prv": 0.0}
        out["units"]["federation" if unit == FEDERATION else str(unit)] = {
            "budget": budget, "delta": delta, "epsilon": both[cfg.accountant], "epsilon_rdp": both["rdp"],
            "epsilon_prv": both["prv"], "rounds_released": len(events), "steps": sum(e.steps for e in events),
            "noise_multiplier": events[-1].noise_multiplier if events else None,
            "sample_rate": events[-1].sample_rate if events else None, "clip_norm": cfg.clip_norm,
        }
    return out


def _write_outputs(folder: RunFolder, cfg: RunConfig, record: RunRecord) -> None:
    resolved = cfg.to_record()
    resolved["epsilon"] = {str(lender): cfg.budget_for(lender) for lender in range(cfg.lenders)} if cfg.dp else None
    resolved["run-epsilon"] = cfg.epsilon if cfg.dp else None
    resolved["data-dir"] = cfg.resolved_data_dir()
    resolved["fedcredit-version"] = __version__
    resolved["rounds-completed"] = len(record.rounds)
    resolved["stopped-early"] = record.stopped_early
    folder.write_json("config.json", resolved)
    folder.write_csv("metrics.csv", METRICS_COLUMNS, record.metrics_rows)
    folder.write_csv("epsilon.csv", EPSILON_COLUMNS, record.epsilon_rows)
    for lender, manifest in sorted(record.manifests.items()):
        folder.write_json(f"manifests/lender_{lender:03d}.json", manifest)
    folder.path("privacy_events.jsonl").write_text("".join(json.dumps(e.to_dict(), sort_keys=True) + "\n" for e in record.events))
    folder.write_json("privacy.json", privacy_summary(cfg, record))
    folder.path("rounds.jsonl").write_text("".join(json.dumps(r.__dict__) + "\n" for r in record.rounds))
