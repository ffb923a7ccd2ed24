"""The lender: a Flower ClientApp (Message API).

It loads only its own records (partition id from the node config in simulation), applies the
data-minimization policy, trains with Opacus DP-SGD and keeps its privacy events in its own state,
so the accountant persists across rounds. It replies with model arrays and aggregate scalars only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federation.audit_trail.attest import manifest_body, refusal_body, signed_record, update_body
from federation.audit_trail.canonical import arrays_hash, config_hash
from federation.audit_trail.keys import keys_dir_for, lender_name, load_or_create, public_hex
from federation.config import RunConfig
from federation.data import LenderData, load_lender
from federation import secagg_lender
from federation.messages import (ARRAYS, ATTESTATION, CONFIG, MANIFEST, MASKED, METRICS, RESUMED, SECAGG, manifest_to_record,
                                 numpy_arrays, run_config_from)
from federation.metrics import credit_metrics
from federation.model import build_model, predict_proba
from federation.privacy.accountant import calibrate_noise, default_delta, sample_rate, steps_per_epoch
from federation.privacy.budget import PrivacyBudget
from federation.privacy.events import PrivacyEvent
from federation.privacy.lender_level import clip_update
from federation.runfolder import write_atomically
from federation.training import DPSettings, train_local

app = ClientApp()
STATE = "fedcredit-privacy"


def lender_id(context: Context) -> int:
    """Simulation: Flower's partition-id. Deployment: the node config's lender-id."""
    config = context.node_config
    return int(config.get("lender-id", config.get("partition-id", 0)))


@lru_cache(maxsize=64)
def _signing_key(keys_dir: str, lender: int):
    return load_or_create(Path(keys_dir), lender_name(lender))


def _keys_folder(cfg: RunConfig, context: Context) -> str:
    """This lender's private folder: node config 'keys-dir' (deployment), else the run's keys folder."""
    return str(context.node_config.get("keys-dir") or keys_dir_for(cfg.output_dir, cfg.keys_dir))


def _key(cfg: RunConfig, context: Context, lender: int):
    return _signing_key(_keys_folder(cfg, context), lender)


def _run_id(cfg: RunConfig) -> str:
    return config_hash(cfg.to_record())


@lru_cache(maxsize=8)
def _cached_lender(cfg: RunConfig, lender: int) -> LenderData:
    return load_lender(cfg, lender)


def _data(cfg: RunConfig, context: Context) -> LenderData:
    """Loaded once per process and run: later rounds reuse the encoded records. A deployed lender reads
    its records from its own node config's data-dir, wherever the coordinator's run config points."""
    if context.node_config.get("data-dir"):
        cfg = cfg.replace(data_dir=str(context.node_config["data-dir"]))
    return _cached_lender(cfg, lender_id(context))


def _model(cfg: RunConfig, data: LenderData, msg: Message):
    model = build_model(cfg.model, len(data.features), cfg.hidden)
    if ARRAYS in msg.content:
        model.load_state_dict(msg.content[ARRAYS].to_torch_state_dict())
    return model


def _budget_file(cfg: RunConfig, context: Context, lender: int) -> Path:
    """The lender's own copy of its privacy state, beside its key: it survives a crash of the run."""
    return Path(_keys_folder(cfg, context)) / f"{lender_name(lender)}.{_run_id(cfg)[:16]}.budget.json"  # per run, even in a shared folder


def _load_budget(cfg: RunConfig, context: Context, lender: int, budget: float, delta: float,
                 resumed: bool) -> PrivacyBudget:
    if STATE in context.state:
        return PrivacyBudget.from_json(str(context.state[STATE]["budget"]))
    path = _budget_file(cfg, context, lender)
    if resumed and path.exists():  # a resumed run: this process is new, the lender's spending is not
        return PrivacyBudget.from_json(path.read_text())
    return PrivacyBudget(budget, delta, cfg.accountant)


def _save_budget(cfg: RunConfig, context: Context, lender: int, state: PrivacyBudget) -> None:
    context.state[STATE] = ConfigRecord({"budget": state.to_json()})
    path = _budget_file(cfg, context, lender)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(path, context.state[STATE]["budget"])


@app.query("manifest")
def manifest(msg: Message, context: Context) -> Message:
    cfg = run_config_from(msg.content[CONFIG])
    data = _data(cfg, context)
    lender = lender_id(context)
    key = _key(cfg, context, lender)
    body = manifest_body(_run_id(cfg), lender, public_hex(key), data.manifest)
    return Message(RecordDict({MANIFEST: manifest_to_record(data.manifest),
                               ATTESTATION: signed_record(key, body, with_public_key=True)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content[CONFIG]
    cfg = run_config_from(config)
    rnd = int(config["server-round"])
    lender = lender_id(context)
    if cfg.fail_rate and np.random.default_rng([cfg.seed, lender, rnd, 0xFA11]).random() < cfg.fail_rate:
        # Fault injection: this lender crashes before doing anything this round (nothing is released).
        raise RuntimeError(f"injected failure of lender {lender} in round {rnd}")
    data = _data(cfg, context)
    model = _model(cfg, data, msg)
    n = len(data.y_train)
    metrics: dict[str, float | int] = {"lender-id": lender, "server-round": rnd, "num-examples": n, "declined": 0}
    record_level = cfg.dp and cfg.dp_level == "record"
    dp = None
    if record_level:
        state = _load_budget(cfg, context, lender, cfg.budget_for(lender), cfg.delta or default_delta(n),
                             bool(config.get(RESUMED, False)))
        if not cfg.secure_rng:  # with fresh secure noise a retrained round is a new release: count both
            state.redo(rnd, arrays_hash(numpy_arrays(msg.content[ARRAYS])))
        q = sample_rate(n, cfg.batch_size)
        steps = cfg.local_epochs * steps_per_epoch(n, cfg.batch_size)
        if state.sigma is None:
            # Calibrated once for the whole run (rounds x local steps), never per round; or fixed by the user.
            state.sigma = cfg.noise_multiplier or calibrate_noise(state.budget, state.delta, q, cfg.rounds * steps, cfg.accountant)
        if not state.admits(PrivacyEvent(lender, rnd, state.sigma, q, steps, cfg.clip_norm)):
            # Refuse before any release: this round would take the lender past its budget.
            spent = state.spent()
            metrics.update({"declined": 1, "epsilon": spent, "delta": state.delta, "epsilon-budget": state.budget})
            _save_budget(cfg, context, lender, state)
            body = refusal_body(_run_id(cfg), lender, rnd, epsilon_spent=spent, budget=state.budget,
                                delta=state.delta, accountant=cfg.accountant)
            return Message(RecordDict({METRICS: MetricRecord(metrics),
                                       ATTESTATION: signed_record(_key(cfg, context, lender), body)}), reply_to=msg)
        dp = DPSettings(state.sigma, cfg.clip_norm, cfg.secure_rng)
    received = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # Only under FedProx: the run config always carries proximal-mu, so its presence alone means nothing.
    mu = cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0
    result = train_local(
        model, data.x_train, data.y_train, epochs=cfg.local_epochs, batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, seed=(cfg.seed * 1_000_003 + lender * 1009 + rnd) % 2**31, dp=dp, proximal_mu=mu,
    )
    if cfg.secure_aggregation:
        # What leaves the lender is only its masked update: uniform noise to anyone without the others' masks.
        # Masked before the release is recorded: if masking fails, nothing left the lender and nothing is spent.
        update = {k: v.detach().numpy() - received[k].numpy() for k, v in model.state_dict().items()}
        masked = secagg_lender.masked_update(context, rnd, msg.content[SECAGG], update, cfg.max_update_norm)
    metrics["train-loss"] = result.loss
    metrics["steps"] = result.steps
    if record_level:
        state.record(PrivacyEvent(lender, rnd, state.sigma, q, result.steps, cfg.clip_norm))
        _save_budget(cfg, context, lender, state)
        metrics.update({
            "epsilon": state.spent(), "delta": state.delta, "noise-multiplier": state.sigma,
            "sample-rate": q, "clip-norm": cfg.clip_norm, "epsilon-budget": state.budget,
        })
    elif cfg.dp:
        # Lender-level DP: the coordinator adds the noise; the lender bounds its influence by
        # clipping its whole update (the server clips again, so a lender cannot skip this).
        model.load_state_dict(clip_update(model.state_dict(), received, cfg.clip_norm))
        metrics["clip-norm"] = cfg.clip_norm
    arrays = ArrayRecord({MASKED: Array(masked)}) if cfg.secure_aggregation else ArrayRecord(model.state_dict())
    body = update_body(
        _run_id(cfg), lender, rnd, numpy_arrays(arrays),
        events=[state.events[-1].to_dict()] if record_level else [],
        epsilon=metrics.get("epsilon"), delta=metrics.get("delta"), budget=metrics.get("epsilon-budget"),
        accountant=cfg.accountant, granularity=cfg.dp_level if cfg.dp else None,
    )
    content = RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics),
                          ATTESTATION: signed_record(_key(cfg, context, lender), body)})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config = msg.content[CONFIG]
    cfg = run_config_from(config)
    data = _data(cfg, context)
    model = _model(cfg, data, msg)
    scores = credit_metrics(data.y_test, predict_proba(model, data.x_test))
    metrics = {"lender-id": lender_id(context), "server-round": int(config["server-round"]),
               "num-examples": len(data.y_test), **scores}
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


def _secagg_step(msg: Message, context: Context, step) -> Message:
    cfg = run_config_from(msg.content[CONFIG])
    rnd = int(msg.content[CONFIG]["server-round"])
    return Message(RecordDict({SECAGG: step(context, rnd, _run_id(cfg), msg.content[SECAGG])}), reply_to=msg)


@app.query("secagg_keys")
def secagg_keys(msg: Message, context: Context) -> Message:
    return _secagg_step(msg, context, lambda ctx, rnd, _, request: secagg_lender.advertise(ctx, rnd, request))


@app.query("secagg_shares")
def secagg_shares(msg: Message, context: Context) -> Message:
    return _secagg_step(msg, context, secagg_lender.share)


@app.query("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    return _secagg_step(msg, context, secagg_lender.reveal)
