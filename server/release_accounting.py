"""Privacy accounting of the lenders' releases, as the coordinator receives them.

Every reply that carries a valid release is recorded in the ledger and accounted, accepted or not: a lender whose
update is rejected still spent its budget. Each lender's signed privacy claim is checked against what its own signed
releases support; a lender that claims otherwise breaks the contract and stops the run.
"""

from __future__ import annotations

import math

from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import canonical
from federation.config import RunConfig
from federation.lender_policy import effective_delta
from federation.privacy.accountant import epsilon
from federation.privacy.events import PrivacyEvent
from server.errors import RunFailed
from server.ledger_keeper import AttestationRejected, LedgerKeeper
from server.run_record import RunRecord


def record_releases(
    keeper: LedgerKeeper, record: RunRecord, cfg: RunConfig, rnd: int, releases: list[tuple[int, dict]]
) -> int:
    """Sign into the ledger and account each (lender, plain reply) in lender order. Returns how many declined."""
    declined = 0
    for lender, plain in sorted(releases, key=lambda item: item[0]):
        try:
            body = keeper.reply(rnd, lender, plain)
        except AttestationRejected as exc:
            raise RunFailed(str(exc)) from None
        declined += body["type"] == L.LENDER_REFUSAL
        account_release(record, cfg, lender, rnd, body)
    return declined


def account_release(record: RunRecord, cfg: RunConfig, lender: int, rnd: int, body: dict) -> None:
    """Check a lender's signed privacy claim against what its own signed releases support, and keep the release.

    The lender's delta must follow its signed policy (or the coordinator's stricter request), its budget be the one
    asked for, its release number follow its previous one, and its epsilon equal the composition of all its
    releases."""
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
        _check_record_level_claim(record, cfg, lender, rnd, body)
    if body["type"] == L.LENDER_UPDATE:
        mine.append(body)


def lender_delta(cfg: RunConfig, manifest: dict) -> float:
    """The delta a lender accounts at: the coordinator's, or the stricter one of its signed policy."""
    return effective_delta(cfg.delta, manifest["policy"].get("delta", 0.0), int(manifest["train_records"]))


def _check_record_level_claim(record: RunRecord, cfg: RunConfig, lender: int, rnd: int, body: dict) -> None:
    """A record-level release states its delta, budget and epsilon: each must be the one its releases support."""
    expected = lender_delta(cfg, record.manifests[lender])
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
