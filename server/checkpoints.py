"""The coordinator's checkpoint after each round, and the resumption of a killed run from it.

The checkpoint holds the global model, the finished rounds and the random module's state (Flower's strategies draw
lenders with it): a resumed run sends the same requests as before the crash, so that lenders resend what they sent.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

from federation.audit_trail import checkpoint
from federation.audit_trail.run_view import RunView
from federation.config import RunConfig
from federation.messages import numpy_arrays
from federation.model import get_arrays, model_for
from server.run_record import RoundSummary, RunRecord


def save_round(
    folder: Path, key: bytes, run_id: str, rnd: int, arrays: ArrayRecord, rounds: list[RoundSummary]
) -> None:
    """Checkpoint the run after round `rnd`."""
    checkpoint.save(
        folder,
        key,
        run_id,
        {
            "round": rnd,
            "arrays": checkpoint.encode_arrays(numpy_arrays(arrays)),
            "rounds": [r.__dict__ for r in rounds],
            "random": _jsonable(random.getstate()),
        },
    )


def initial_state(cfg: RunConfig, view: RunView) -> dict:
    """The state a run starts its first round from, as a checkpoint would hold it: the initial model (the
    configuration's, with its seed, on the features the lenders signed), no round finished, and the random module as
    `random.seed(cfg.seed)` leaves it. A run killed in its first round has no checkpoint yet, and needs none: this is
    exactly where it stood (before, it could never be resumed, and its lenders had spent budget on a run that could
    not finish; found by a red team)."""
    features = next(iter(view.manifests.values()))["features"]
    arrays = get_arrays(model_for(cfg, len(features), seed=cfg.seed))
    return {
        "round": 0,
        "arrays": checkpoint.encode_arrays(arrays),
        "rounds": [],
        "random": _jsonable(random.Random(cfg.seed).getstate()),
    }


def restore(state: dict, model: torch.nn.Module, record: RunRecord, view: RunView) -> int:
    """Put the model, the record and the random state back as they were after the checkpointed round; returns
    the round to go on with."""
    model.load_state_dict({k: torch.from_numpy(v) for k, v in checkpoint.decode_arrays(state["arrays"]).items()})
    record.releases = {lender: view.releases(lender) for lender in view.lenders()}
    record.rounds = [RoundSummary(**r) for r in state["rounds"]]
    random.setstate(_random_state(state["random"]))
    return state["round"] + 1


def _jsonable(value: Any) -> Any:
    """The random module's state (nested tuples) as JSON lists."""
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _random_state(value: Any) -> Any:
    """The random module's state back from JSON lists (setstate wants tuples)."""
    return tuple(_random_state(v) for v in value) if isinstance(value, list) else value
