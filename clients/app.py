"""The lender: a Flower ClientApp (Message API).

Each handler sees only the lender's own folder (clients/home.py: its policy, identity key and privacy state) and
its own records, loaded as its policy says (clients/session.py). It applies the data-minimization policy, trains
with DP-SGD under its own limits and randomness (clients/dp_round.py), signs what it sends, and replies with model
arrays and aggregate scalars only.

In deployment a lender that joined with `fedcredit lender join` answers every message in its worker
(clients/worker.py: its own long-lived process, which calls these handlers from HANDLERS, imported once). Where
Flower starts a ClientApp process per message instead (a SuperNode in subprocess isolation), each imports this
module, so it imports only what every handler needs (Flower, signing, the lender's folder): the handlers that
train, score or account import torch, Opacus and the accountants themselves, and the secure-aggregation steps and
the manifest (from the lender's cached records, clients/record_cache.py) run without them
(tests/test_deploy_speed.py).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.clientapp import ClientApp

from clients import secagg
from clients.session import Session, preload_records
from federation.audit_trail.attest import MANIFEST_FIELDS, evaluation_body, final_body, manifest_body
from federation.lender_policy import effective_delta
from federation.messages import (
    ATTESTATION,
    MANIFEST,
    METRICS,
    SECAGG,
    manifest_to_record,
)
from federation.secagg import SecAggError

# Opacus installs a root log handler when imported, which would print each of Flower's log lines a second time in
# the lender's process (the coordinator's CLI does the same for its own: fedcredit/cli.py, _quiet_libraries).
logging.getLogger("flwr").propagate = False
app = ClientApp()
Handler = Callable[[Message, Context], Message]
HANDLERS: dict[str, Handler] = {}  # what the lender's worker (clients/worker.py) answers, by message kind


def handles(kind: str) -> Callable[[Handler], Handler]:
    """Registers a handler with Flower's ClientApp (`train`, `evaluate`, or the query `kind`) and, under the same
    name, for the lender's worker (clients/worker.py): one registration, so the two answer the same messages."""
    flower = app.train() if kind == "train" else app.evaluate() if kind == "evaluate" else app.query(kind)

    def register(handler: Handler) -> Handler:
        HANDLERS[kind] = handler
        return flower(handler)  # Flower's decorator returns the function itself

    return register


def warm_up(folder: Path) -> None:
    """What the worker does once, before its first message: import what training and scoring need and read the
    lender's records (a problem with them is reported by the message that needs them, as without a worker)."""
    try:
        prepare_process()
    except Exception as exc:  # the first message meets the same problem and reports it
        print(f"fedcredit worker: no warm-up step ({type(exc).__name__}: {exc})", file=sys.stderr)
    try:
        preload_records(Path(folder))
    except Exception as exc:
        print(f"fedcredit worker: the records are read with the first message ({exc})", file=sys.stderr)


def prepare_process() -> None:
    """Import what the handlers import when first called (torch's optimizer machinery, scikit-learn's metrics, the
    accountants: about 450 modules) and take one step of each built-in model on all-zero rows (`_first_step`).

    The worker calls it before its first message. The in-process engine calls it in the run's process before it
    forks the lender processes (fedcredit/runner.py): done in each lender process instead, every one held its own
    copy of those modules, 60-70 MB each at 1,000 lenders (benchmarks/results/perf_scale.md). No randomness made
    here outlives it: the step's SecureRandomness is its own, and each training makes a fresh one
    (clients/dp_round.py), so no two forked lenders share a keystream."""
    import pandas as pd

    from clients import dp_round  # noqa: F401  (torch, Opacus, the accountants)
    from federation import metrics, model  # noqa: F401

    # pandas' first column of strings loads pyarrow's pandas bridge (pandas 3 stores strings in pyarrow) when a
    # lender's records are read; `datasets` used to import it for the run, and no longer does (federation/data/partition.py)
    pd.Series(["a"])

    _torch_ready()
    _first_step()


def _first_step() -> None:
    """One DP-SGD step and one scoring of each built-in model on a few all-zero rows, none of the lender's records,
    so that their one-time cost in a new process (about a second here: torch's first backward pass, the first
    secure noise) is paid before the first round instead of in it (benchmarks/results/perf_deploy.md)."""
    import numpy as np

    from federation.metrics import credit_metrics
    from federation.model import build_model, predict_proba
    from federation.privacy.noise import SecureRandomness
    from federation.training import DPSettings, train_local

    x, y = np.zeros((8, 4), dtype=np.float32), np.tile(np.array([0.0, 1.0], dtype=np.float32), 4)
    for kind in ("logreg", "mlp"):
        model = build_model(kind, 4, 4)
        dp = DPSettings(1.0, 1.0, SecureRandomness())
        train_local(model, x, y, epochs=1, batch_size=4, learning_rate=0.1, seed=0, dp=dp)
        credit_metrics(y, predict_proba(model, x))


def signed_manifest(session: Session) -> dict:
    """The manifest the lender signs: what it used and refused, its counts, a keyed commitment to its records
    (never their plain hash), and its own privacy policy."""
    manifest = dict(session.data.manifest)
    manifest["data_commitment"] = session.home.commit(bytes.fromhex(manifest.pop("records_digest")))
    manifest["policy"] = session.policy.public_terms()
    return {k: manifest[k] for k in MANIFEST_FIELDS}


@handles("manifest")
def manifest(msg: Message, context: Context) -> Message:
    s = Session(msg, context)
    fields = signed_manifest(s)
    body = manifest_body(s.run, s.lender, s.home.public_hex, fields)
    return Message(
        RecordDict({MANIFEST: manifest_to_record(s.lender, fields), ATTESTATION: s.sign(body, with_public_key=True)}),
        reply_to=msg,
    )


def _torch_ready() -> None:
    from federation.training import set_torch_threads

    set_torch_threads()  # a lender's process that trains or scores: one thread (why: federation/training.py)


@handles("train")
def train(msg: Message, context: Context) -> Message:
    from clients import dp_round

    _torch_ready()
    return dp_round.train(Session(msg, context))


@handles("evaluate")
def evaluate(msg: Message, context: Context) -> Message:
    """The lender scores a model on its own test records, once per round of a run: its scores lie outside the
    epsilon, so a coordinator must not be able to ask for them on model after model it crafted."""
    from federation.metrics import credit_metrics
    from federation.model import model_for, predict_proba, set_arrays

    _torch_ready()
    s = Session(msg, context)
    data, cfg = s.data, s.request
    digest = s.digest(s.received_hash)
    with s.home.spent() as spent:
        account = spent["runs"].setdefault(s.run, {"releases": 0, "events": [], "sigma": None, "closed": False})
        asked = account.setdefault("evaluated", {})
        if asked.get(str(s.round), digest) != digest or not 1 <= s.round <= cfg.rounds:
            raise PermissionError(
                f"lender {s.lender} scores one model per round of a run; round {s.round} was "
                "already scored, or is not a round of this run"
            )
        asked[str(s.round)] = digest
    model = model_for(cfg, len(data.features))
    set_arrays(model, s.received)
    scores = credit_metrics(data.y_test, predict_proba(model, data.x_test))
    metrics: dict[str, MetricRecordValues] = {
        "lender-id": s.lender,
        "server-round": s.round,
        "num-examples": len(data.y_test),
        **scores,
    }
    body = evaluation_body(s.run, s.lender, s.round, s.received_hash, len(data.y_test), scores)
    return Message(RecordDict({METRICS: MetricRecord(metrics), ATTESTATION: s.sign(body)}), reply_to=msg)


@handles("final")
def final(msg: Message, context: Context) -> Message:
    """The end of the run: the lender signs its own count of its releases and its epsilon, and closes the run on
    its side (it trains no more in it), so a release left out of the ledger cannot go unnoticed."""
    from clients.dp_round import required
    from federation.privacy.accountant import epsilon, epsilons
    from federation.privacy.events import PrivacyEvent

    s = Session(msg, context)
    cfg = s.request
    with s.home.spent() as spent:
        account = spent["runs"].setdefault(s.run, {"releases": 0, "events": [], "sigma": None, "closed": False})
        account["closed"] = True
        events = [PrivacyEvent.from_dict(e) for e in account["events"]]
        every = [PrivacyEvent.from_dict(e) for a in spent["runs"].values() for e in a["events"]]
        runs = sum(1 for a in spent["runs"].values() if a["releases"])
        releases, refusals, evaluations = (
            account["releases"],
            len(account.get("refused", {})),
            len(account.get("evaluated", {})),
        )
    record_level = cfg.dp and cfg.dp_level == "record"
    delta = effective_delta(cfg.delta, s.policy.delta, s.own_records) if cfg.dp else None
    both: dict[str, float] = {}
    lifetime = None
    if record_level:
        record_delta = required(delta, "delta")
        both = epsilons(events, record_delta) if events else {"rdp": 0.0, "prv": 0.0}
        lifetime = epsilon(every, record_delta, cfg.accountant)
    body = final_body(
        s.run,
        s.lender,
        releases=releases,
        refusals=refusals,
        evaluations=evaluations,
        epsilons=both,
        delta=delta,
        accountant=cfg.accountant,
        lifetime_epsilon=lifetime,
        lifetime_runs=runs,
    )
    return Message(RecordDict({ATTESTATION: s.sign(body)}), reply_to=msg)


def _secagg_step(msg: Message, context: Context, step, once: str, value=lambda request: "") -> Message:
    """One secure-aggregation step, at most once a round (or, for the survivor set, for one value only).

    The protocol's own state lives in Flower's Context, but a SuperNode may run two of this lender's ClientApp
    processes at once, each on its own snapshot of that state and each writing its copy back: a coordinator that
    sends two requests together could get two survivor sets signed and revealed, and with them one lender's
    update (the red team's race). So the once-a-round rules are kept, under the file lock, in the lender's own
    folder as well."""
    s = Session(msg, context)
    request = msg.content[SECAGG]
    with s.home.spent() as spent:
        account = spent["runs"].setdefault(s.run, {"releases": 0, "events": [], "sigma": None, "closed": False})
        done = account.setdefault("secagg", {}).setdefault(str(s.round), {})
        wanted = value(request)
        if once in done and done[once] != wanted:
            raise SecAggError(
                f"lender {s.lender} already took the secure-aggregation step '{once}' in round "
                f"{s.round}: it takes each step once a round"
            )
        done[once] = wanted
    return Message(RecordDict({SECAGG: step(s, request)}), reply_to=msg)


def _digest(text) -> str:
    return hashlib.sha256(str(text).encode()).hexdigest()


@handles("secagg_keys")
def secagg_keys(msg: Message, context: Context) -> Message:
    return _secagg_step(
        msg,
        context,
        lambda s, request: secagg.advertise(
            s.context, s.round, s.run, s.lender, s.home.identity, s.home.registry, request
        ),
        "keys",
        lambda request: secrets.token_hex(16),
    )


@handles("secagg_shares")
def secagg_shares(msg: Message, context: Context) -> Message:
    return _secagg_step(
        msg,
        context,
        lambda s, request: secagg.share(s.context, s.round, s.run, s.lender, s.home.registry, request),
        "shares",
        lambda request: secrets.token_hex(16),
    )


@handles("secagg_confirm")
def secagg_confirm(msg: Message, context: Context) -> Message:
    return _secagg_step(
        msg,
        context,
        lambda s, request: secagg.confirm(
            s.context, s.round, s.run, s.lender, s.home.identity, s.home.registry, request
        ),
        "confirm",
        lambda request: _digest(request.get("unmask", "")),
    )


@handles("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    return _secagg_step(
        msg,
        context,
        lambda s, request: secagg.reveal(s.context, s.round, s.run, s.lender, s.home.registry, request),
        "reveal",
        lambda request: secrets.token_hex(16),
    )
