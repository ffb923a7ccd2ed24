"""What a lender signs: its manifest, each update it sends, each round it refuses.

Bodies name the run (the configuration hash), the lender and the round, so a signature cannot be
replayed into another run, for another lender or another round.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord

from federation.audit_trail.canonical import arrays_bytes, arrays_hash, arrays_shapes, canonical
from federation.audit_trail.keys import public_hex, sign
from federation.audit_trail.ledger import BUDGET_REFUSAL, LENDER_MANIFEST, LENDER_UPDATE

MANIFEST_FIELDS = ("dataset", "card", "records_total", "records_without_consent", "records_used", "train_records",
                   "test_records", "fields_used", "fields_refused", "data_hash")


def manifest_body(run: str, lender: int, public_key: str, manifest: Mapping) -> dict:
    return {"type": LENDER_MANIFEST, "run": run, "lender": lender, "public_key": public_key,
            **{k: manifest[k] for k in MANIFEST_FIELDS}}


def update_body(run: str, lender: int, rnd: int, arrays: Mapping[str, np.ndarray], *, events: list[dict],
                epsilon: float | None, delta: float | None, budget: float | None, accountant: str,
                granularity: str | None) -> dict:
    return {"type": LENDER_UPDATE, "run": run, "lender": lender, "round": rnd, "events": events,
            "epsilon": epsilon, "delta": delta, "budget": budget, "accountant": accountant,
            "granularity": granularity, "bytes_sent": arrays_bytes(arrays),
            "shapes": arrays_shapes(arrays),
            "update_hash": arrays_hash(arrays)}


def refusal_body(run: str, lender: int, rnd: int, *, epsilon_spent: float, budget: float, delta: float,
                 accountant: str) -> dict:
    return {"type": BUDGET_REFUSAL, "run": run, "lender": lender, "round": rnd, "epsilon_spent": epsilon_spent,
            "budget": budget, "delta": delta, "accountant": accountant,
            "reason": "the next round would take this lender past its epsilon budget"}


def signed_record(key: Ed25519PrivateKey, body: dict, with_public_key: bool = False) -> ConfigRecord:
    data = canonical(body)
    record = {"body": data.decode(), "signature": sign(key, data)}
    if with_public_key:
        record["public-key"] = public_hex(key)
    return ConfigRecord(record)
