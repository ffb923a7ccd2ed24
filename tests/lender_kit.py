"""Drive one lender's ClientApp directly, as a coordinator would (honest or not): its own folder and policy,
and train / evaluate / final messages built from any run configuration."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.home import LenderHome, init_lender
from federation.audit_trail.canonical import config_hash
from federation.config import RunConfig
from federation.data import load_lender
from federation.lender_policy import for_simulated_lender
from federation.messages import ARRAYS, CONFIG, run_config_record
from federation.model import build_model


def make_lender(folder: Path, cfg: RunConfig, lender: int, **policy: object) -> tuple[Context, LenderHome]:
    """A lender that wrote its own policy from `cfg` (changed by `policy`), and the Flower context it runs in."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    made = for_simulated_lender(cfg, lender)
    init_lender(folder, made.__class__(**{**made.__dict__, **policy}))
    context = Context(run_id=1, node_id=7, node_config={"lender-dir": str(folder)}, state=RecordDict(), run_config={})
    return context, LenderHome(folder)


def initial_model(cfg: RunConfig, lender: int = 0):
    return build_model(cfg.model, len(load_lender(cfg, lender).features), cfg.hidden, seed=cfg.seed)


def message(cfg: RunConfig, rnd: int, kind: str = "train", model=None, **extra: object) -> Message:
    config = run_config_record(cfg)
    config["server-round"] = rnd
    content = {CONFIG: ConfigRecord({**dict(config), **extra})}
    if model is not None:
        content[ARRAYS] = ArrayRecord(model.state_dict())
    msg = Message(RecordDict(content), dst_node_id=7, message_type=kind)
    msg.metadata.__dict__["_message_id"] = f"{kind}-{rnd}-{id(msg)}"
    return msg


def spent(home: LenderHome, cfg: RunConfig) -> dict:
    """The lender's own record of this run: releases, events, sigma."""
    path = home.folder / "state" / "spent.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else {}
    return runs.get(config_hash(cfg.to_record()), {"releases": 0, "events": []})


def run_account(run_dir: Path, lender: int) -> dict:
    """A lender's own record of the one run it took part in (releases, events, sigma), read from its folder beside
    the run folder `run_dir`, not from anything the coordinator wrote."""
    path = Path(f"{run_dir}-lenders") / f"lender_{lender:03d}" / "state" / "spent.json"
    (account,) = json.loads(path.read_text())["runs"].values()
    return account
