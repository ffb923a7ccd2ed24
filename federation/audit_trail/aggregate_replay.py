"""Every round's aggregate of a logreg or mlp run, redone from the ledger alone.

Where the coordinator publishes the updates (record-level DP without secure aggregation,
federation/aggregation.py), each round's aggregate records every aggregated lender's update exactly as received.
From them anyone can redo the round: each update must hash to the one its lender signed, the aggregate must hold
every update the round accepted and no other, and Flower's own strategy (the one the configuration names), fed
those updates in the aggregate's order, each weighted by the training records its lender signed in its manifest,
from the previous round's model, must give the model the round records, bit for bit. So a coordinator cannot weight
the updates as it likes, drop one, name a lender it left out, average in an update nobody signed, or step a server
optimizer other than the configuration says, without the verifier seeing it. It still chooses which lenders a round
asks, and may leave an update out with a recorded reason (the ledger shows both).
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np

from federation.aggregation import aggregate_updates, flower_strategy, publishes_updates
from federation.audit_trail import ledger as L
from federation.audit_trail.attest import sent_nothing
from federation.audit_trail.canonical import arrays_hash
from federation.audit_trail.run_view import Attempt, RunView
from federation.config import RunConfig

# The .npy format versions np.save writes (1.0, and 2.0 for a header over 64 KiB).
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class AggregateMismatch(ValueError):
    """A round's aggregate is not what its published updates give (the message says which round and what)."""


def check_aggregates(view: RunView, cfg: RunConfig, initial: dict[str, np.ndarray]) -> int:
    """Redo every finished round of a run that publishes its updates, from the run's `initial` model; returns how
    many rounds were redone (0 for a run that publishes none). Raises AggregateMismatch at the first round whose
    aggregate is not what its updates give."""
    if not publishes_updates(cfg):
        return 0
    strategy = flower_strategy(cfg)
    weights = {lender: manifest.get("train_records") for lender, manifest in view.manifests.items()}
    model, redone = initial, 0
    for attempt in view.complete_rounds():
        agg = attempt.aggregate or {}
        rnd = attempt.round
        if agg.get("skipped"):
            # Without secure aggregation a round is skipped only when no update is usable (server/
            # coordinator_strategy.py `_combine`): a coordinator that accepted updates and kept the old model anyway,
            # with a reason of its own, left them out of the model.
            if problem := unaccounted_updates(attempt, agg, secure=False):
                raise AggregateMismatch(problem)
            if "updates" in agg:
                raise AggregateMismatch(f"round {rnd}: a skipped round's aggregate publishes updates")
            if agg.get("model_hash") != arrays_hash(model):
                raise AggregateMismatch(f"round {rnd} was skipped, but its model is not the previous round's")
            continue
        updates = _published(attempt, agg, model)
        try:
            weighted = [(arrays, _weight(weights.get(lender), lender)) for lender, arrays in updates]
            model = aggregate_updates(strategy, rnd, model, weighted)
        except (ValueError, TypeError) as exc:
            raise AggregateMismatch(f"round {rnd}: the published updates cannot be aggregated ({exc})") from None
        if arrays_hash(model) != agg.get("model_hash"):
            raise AggregateMismatch(
                f"round {rnd}'s model is not the {cfg.strategy} of the updates its lenders signed, each weighted by "
                "the training records of its manifest"
            )
        redone += 1
    return redone


def accepted_updates(attempt: Attempt) -> dict[int, str]:
    """The round's accepted updates: lender -> the update hash it signed (an update later rejected, or one that
    holds nothing, is not accepted)."""
    rejected = {
        e["body"].get("lender") for e in attempt.of_type(L.UPDATE_REJECTED) if e["body"].get("stage") != "evaluate"
    }
    return {
        e["body"]["lender"]: e["body"].get("update_hash")
        for e in attempt.of_type(L.LENDER_UPDATE)
        if e["body"]["lender"] not in rejected and not sent_nothing(e["body"])
    }


def unaccounted_updates(attempt: Attempt, agg: dict, secure: bool) -> str:
    """Why a round's aggregate does not stand for exactly the updates the round accepted, or "": a round that was
    aggregated names each accepted update's lender (verify.py `_check_attempts` has made them distinct lender
    numbers), and a skipped round accepted nothing, unless under secure aggregation (`secure`), where a skip can
    follow accepted masked updates whose sum could not be opened. Shared by the replay here and the gbdt rebuild
    (audit_trail/gbdt_ledger.py)."""
    rnd, accepted = attempt.round, accepted_updates(attempt)
    if agg.get("skipped"):
        if accepted and not secure:
            return (
                f"round {rnd} is recorded as skipped ({agg.get('reason')!r}), but it accepted updates from lenders "
                f"{sorted(accepted)}"
            )
        return ""
    lenders = agg.get("lenders", [])
    if sorted(accepted) != sorted(lenders):
        left_out = sorted(set(accepted) - set(lenders))
        return (
            f"round {rnd}'s aggregate names lenders {sorted(lenders)}; the round accepted updates from "
            f"{sorted(accepted)}" + (f" (lender {left_out[0]}'s accepted update is left out)" if left_out else "")
        )
    return ""


def _published(attempt: Attempt, agg: dict, model: dict[str, np.ndarray]) -> list[tuple[int, dict[str, np.ndarray]]]:
    """The aggregate's updates in its lenders' order, each checked against the hash its lender signed and the
    model's arrays. The aggregate's `lenders` are distinct lender numbers by now (verify.py `_check_attempts`)."""
    rnd = attempt.round
    lenders = agg.get("lenders", [])
    published = agg.get("updates")
    if not isinstance(published, dict):
        raise AggregateMismatch(f"round {rnd}'s aggregate does not publish the updates it aggregated")
    if problem := unaccounted_updates(attempt, agg, secure=False):
        raise AggregateMismatch(problem)
    accepted = accepted_updates(attempt)
    if set(published) != {str(lender) for lender in lenders}:
        raise AggregateMismatch(f"round {rnd}'s aggregate publishes updates of other lenders than it names")
    out = []
    for lender in lenders:
        arrays = _decoded(published[str(lender)], model)
        if arrays is None:
            raise AggregateMismatch(
                f"round {rnd}: lender {lender}'s published update cannot be read as the model's arrays"
            )
        if arrays_hash(arrays) != accepted[lender]:
            raise AggregateMismatch(f"round {rnd}: lender {lender}'s published update is not the one it signed")
        out.append((lender, arrays))
    return out


def _decoded(encoded: object, model: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """A published update (federation/audit_trail/checkpoint.py `encode_arrays`: each array as base64 of its .npy
    bytes) as the model's arrays, or None when it is anything else. Not np.load: it allocates whatever shape a
    header claims before reading (a forged header of 4 TiB raised MemoryError) and reads a zip as an .npz; here each
    header must give exactly the model's array, dtype and byte count before anything is allocated."""
    if not isinstance(encoded, dict) or set(encoded) != set(model):
        return None
    out = {}
    for name, like in model.items():
        text = encoded[name]
        if not isinstance(text, str):
            return None
        try:
            raw = base64.b64decode(text, validate=True)
            stream = io.BytesIO(raw)
            read_header = _HEADER_READERS.get(np.lib.format.read_magic(stream))
            if read_header is None:
                return None
            shape, fortran, dtype = read_header(stream)
        except (ValueError, TypeError, binascii.Error, SyntaxError, EOFError):
            return None
        if fortran or tuple(shape) != like.shape or dtype != like.dtype:
            return None
        data = raw[stream.tell() :]
        if len(data) != like.nbytes:
            return None
        out[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
    return out


def _weight(records: object, lender: int) -> int:
    if not isinstance(records, int) or isinstance(records, bool) or records <= 0:
        raise ValueError(f"lender {lender}'s manifest signs no positive number of training records")
    return records
