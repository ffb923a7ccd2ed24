"""What a lender signs: its manifest, each update it sends, each round it refuses, each evaluation, its final account.

Bodies name the run (the configuration hash), the lender and the round, so a signature cannot be replayed into
another run, for another lender or another round. Every update also carries its release number (the n-th
release of this lender in this run) and the lender's final statement the number of releases, so a release that
the coordinator leaves out of the ledger shows as a gap or a short count: the lender, not the coordinator,
keeps the count.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, ConfigRecordValues

from federation.audit_trail.canonical import arrays_bytes, arrays_hash, arrays_shapes, canonical
from federation.audit_trail.keys import public_hex, sign
from federation.audit_trail.ledger import (
    LENDER_EVALUATION,
    LENDER_FINAL,
    LENDER_MANIFEST,
    LENDER_REFUSAL,
    LENDER_UPDATE,
)

MANIFEST_FIELDS = (
    "dataset",
    "card",
    "card_sha256",
    "consent_checked",
    "records_total",
    "records_without_consent",
    "records_used",
    "train_records",
    "test_records",
    "fields_used",
    "fields_refused",
    "features",
    "values_clipped",
    "encoding",
    "data_commitment",
    "policy",
)
# The exact keys of each signed body: the message inspector refuses anything else, so no body can carry more
# than it says (nothing row-shaped, no hidden statistic).
BODY_KEYS = {
    LENDER_MANIFEST: {"type", "run", "lender", "public_key", *MANIFEST_FIELDS},
    LENDER_UPDATE: {
        "type",
        "run",
        "lender",
        "round",
        "request",
        "release",
        "events",
        "epsilon",
        "delta",
        "budget",
        "accountant",
        "granularity",
        "noise",
        "bytes_sent",
        "shapes",
        "update_hash",
        "secure_sum",
        "input_model",
    },
    LENDER_REFUSAL: {
        "type",
        "run",
        "lender",
        "round",
        "request",
        "limit",
        "requested",
        "allowed",
        "reason",
        "epsilon_spent",
        "budget",
        "delta",
        "accountant",
    },
    LENDER_EVALUATION: {
        "type",
        "run",
        "lender",
        "round",
        "model_hash",
        "num_examples",
        "auc",
        "ks",
        "gini",
        "brier",
        "loss",
    },
    LENDER_FINAL: {
        "type",
        "run",
        "lender",
        "releases",
        "refusals",
        "evaluations",
        "epsilon",
        "epsilon_rdp",
        "epsilon_prv",
        "delta",
        "accountant",
        "lifetime_epsilon",
        "lifetime_runs",
    },
}


def clip_count(value: object) -> dict:
    """A manifest's `values_clipped` entry, {"name": column, "below": count, "above": count}; a ValueError when it
    is anything else (a lender could otherwise sign a row's values where counts are read)."""
    if (
        not isinstance(value, dict)
        or set(value) != {"name", "below", "above"}
        or not isinstance(value["name"], str)
        or not all(
            isinstance(value[k], int) and not isinstance(value[k], bool) and value[k] >= 0 for k in ("below", "above")
        )
    ):
        raise ValueError(f"a clipped-values count holds {value!r}")
    return value


def encoding_of(text: str) -> str:
    """`text` when it is a federation.encoding.encoding_text (a JSON object of the scheme and the card's columns), a
    ValueError otherwise. The coordinator's message inspector and the verifier both ask, so that model.json can
    always be derived from a manifest that passed."""
    try:
        value = json.loads(text)
    except RecursionError:  # "[[[[..." from a hostile lender: a ValueError like any other malformed text
        raise ValueError("the encoding is nested too deeply") from None
    if not isinstance(value, dict) or set(value) != {"scheme", "card"} or not isinstance(value["card"], dict):
        raise ValueError("the encoding is not an object of the scheme and the card")
    return text


def manifest_body(run: str, lender: int, public_key: str, manifest: Mapping) -> dict:
    return {
        "type": LENDER_MANIFEST,
        "run": run,
        "lender": lender,
        "public_key": public_key,
        **{k: manifest[k] for k in MANIFEST_FIELDS},
    }


def update_body(
    run: str,
    lender: int,
    rnd: int,
    arrays: Mapping[str, np.ndarray],
    *,
    request: str,
    release: int,
    events: list[dict],
    epsilon: float | None,
    delta: float | None,
    budget: float | None,
    accountant: str,
    granularity: str | None,
    noise: str | None,
    secure_sum: dict | None = None,
    input_model: str = "",
) -> dict:
    """`secure_sum` (gbdt under secure aggregation with DP; None otherwise): the lender's signed policy term
    `colluders`, the roster `threshold` t it relied on, and `share_noise_multiplier`, the noise it added itself
    (clients/dp_round.py, _secure_sum_terms). `input_model`: the hash of the model the lender was sent and trained
    from, so that the verifier can check it is the ledger's global model (a coordinator that sent a model of its own
    making, say one crafted to expose a lender's records through its update, is caught)."""
    return {
        "input_model": input_model,
        "secure_sum": secure_sum,
        "type": LENDER_UPDATE,
        "run": run,
        "lender": lender,
        "round": rnd,
        "request": request,
        "release": release,
        "events": events,
        "epsilon": epsilon,
        "delta": delta,
        "budget": budget,
        "accountant": accountant,
        "granularity": granularity,
        "noise": noise,
        "bytes_sent": arrays_bytes(arrays),
        "shapes": arrays_shapes(arrays),
        "update_hash": arrays_hash(arrays),
    }


def sent_nothing(body: Mapping) -> bool:
    """An update body that holds no arrays: the lender's training failed after it counted the release
    (clients/dp_round.py `_failed_release`). Its release and event count; its update is never a usable one."""
    return body.get("shapes") == {} and body.get("bytes_sent") == 0


def refusal_body(
    run: str,
    lender: int,
    rnd: int,
    *,
    request: str,
    limit: str,
    requested: Any,
    allowed: Any,
    reason: str,
    epsilon_spent: float | None,
    budget: float | None,
    delta: float | None,
    accountant: str,
) -> dict:
    return {
        "type": LENDER_REFUSAL,
        "run": run,
        "lender": lender,
        "round": rnd,
        "request": request,
        "limit": limit,
        "requested": requested,
        "allowed": allowed,
        "reason": reason,
        "epsilon_spent": epsilon_spent,
        "budget": budget,
        "delta": delta,
        "accountant": accountant,
    }


def evaluation_body(run: str, lender: int, rnd: int, model_hash: str, num_examples: int, scores: Mapping) -> dict:
    return {
        "type": LENDER_EVALUATION,
        "run": run,
        "lender": lender,
        "round": rnd,
        "model_hash": model_hash,
        "num_examples": num_examples,
        **{k: _finite(scores.get(k)) for k in ("auc", "ks", "gini", "brier", "loss")},
    }


def final_body(
    run: str,
    lender: int,
    *,
    releases: int,
    refusals: int,
    evaluations: int,
    epsilons: dict,
    delta: float | None,
    accountant: str,
    lifetime_epsilon: float | None,
    lifetime_runs: int,
) -> dict:
    """The lender's own count of everything it signed in the run (releases, refusals, evaluations: none can be left
    out of the ledger unnoticed) and its epsilon under both accountants. `lifetime_*`: what it has spent over every
    run made with its folder (a coordinator that splits its questions over several runs shows up here, where one
    run's ledger alone cannot show it)."""
    return {
        "type": LENDER_FINAL,
        "run": run,
        "lender": lender,
        "releases": releases,
        "refusals": refusals,
        "evaluations": evaluations,
        "epsilon": epsilons.get(accountant),
        "epsilon_rdp": epsilons.get("rdp"),
        "epsilon_prv": epsilons.get("prv"),
        "delta": delta,
        "accountant": accountant,
        "lifetime_epsilon": lifetime_epsilon,
        "lifetime_runs": lifetime_runs,
    }


def signed_record(key: Ed25519PrivateKey, body: dict, with_public_key: bool = False) -> ConfigRecord:
    data = canonical(body)
    record: dict[str, ConfigRecordValues] = {"body": data.decode(), "signature": sign(key, data)}
    if with_public_key:
        record["public-key"] = public_hex(key)
    return ConfigRecord(record)


def _finite(value: Any) -> float | None:
    """NaN is not JSON: an undefined score (a one-class test split has no AUC) is signed as null."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None
