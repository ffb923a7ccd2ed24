"""The coordinator's side of the ledger: checks every lender attestation, then appends it.

A lender's signed body must name this run, this lender and this round, verify under the public key the lender
registered in its manifest, and agree with what actually arrived (the update's hash and size are recomputed from
the received arrays). Anything else stops the run before aggregation. The coordinator's own entries record what
it asked (each round's roster) and what it did (aggregates, rejections, the end of the run), so that the verifier
can rebuild the run from the ledger alone.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from federation import __version__
from federation.audit_trail import ledger as L
from federation.audit_trail.attest import MANIFEST_FIELDS
from federation.audit_trail.canonical import arrays_bytes, arrays_hash, arrays_shapes, canonical, config_hash
from federation.audit_trail.keys import (
    COORDINATOR,
    keys_dir_for,
    load_or_create,
    public_from_hex,
    public_hex,
    verify_signature,
)
from federation.config import RunConfig
from federation.errors import FedCreditError
from federation.messages import numpy_arrays


class AttestationRejected(FedCreditError):
    """A lender's signed statement is missing, forged, or disagrees with what it sent."""


def code_version() -> str:
    """fedcredit's version and, when run from a git checkout, the commit."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"fedcredit {__version__}" + (f" (git {commit})" if commit else "")


def flwr_version() -> str:
    """The Flower release the run's ServerApp and ClientApps ran on (the report names it beside fedcredit's)."""
    return importlib.metadata.version("flwr")


class LedgerKeeper:
    def __init__(self, folder, cfg: RunConfig) -> None:
        self.folder = folder
        self.run = config_hash(cfg.to_record())
        self.key = load_or_create(keys_dir_for(cfg.output_dir, cfg.keys_dir), COORDINATOR)
        self.public_keys: dict[int, Ed25519PublicKey] = {}
        self.ledger = L.Ledger(folder.path("ledger.jsonl"), self.key)
        self.ledger.append_coordinator(
            L.RUN_STARTED,
            {
                "run": self.run,
                "config": cfg.to_record(),
                "code_version": code_version(),
                "flwr_version": flwr_version(),
                "lenders": cfg.lenders,
                "coordinator_public_key": public_hex(self.key),
                "data_dir": cfg.resolved_data_dir(),
            },
        )

    @classmethod
    def resume(cls, folder, cfg: RunConfig) -> LedgerKeeper:
        """Continue the ledger a killed run left: same keys, appending after its last entry."""
        keeper = cls.__new__(cls)
        keeper.folder, keeper.run = folder, config_hash(cfg.to_record())
        keeper.key = load_or_create(keys_dir_for(cfg.output_dir, cfg.keys_dir), COORDINATOR)
        entries = [json.loads(line) for line in folder.path("ledger.jsonl").read_text().splitlines()]
        if not entries or entries[0]["body"].get("run") != keeper.run:
            raise AttestationRejected("the unfinished run's ledger belongs to another configuration")
        keeper.ledger = L.Ledger(folder.path("ledger.jsonl"), keeper.key, head=entries[-1]["hash"], seq=len(entries))
        keeper.public_keys = {
            e["body"]["lender"]: public_from_hex(e["body"]["public_key"])
            for e in entries
            if e["type"] == L.LENDER_MANIFEST
        }
        return keeper

    def entries(self) -> list[dict]:
        return [json.loads(line) for line in self.folder.path("ledger.jsonl").read_text().splitlines()]

    def resumed(self, from_round: int) -> None:
        self.ledger.append_coordinator(L.RUN_RESUMED, {"run": self.run, "from_round": from_round})

    @property
    def head(self) -> str:
        return self.ledger.head

    def _check(
        self, lender: int, attestation: dict | None, kinds: tuple[str, ...], rnd: int | None = None
    ) -> tuple[dict, dict]:
        """The attestation's body, once it is of one of `kinds`, for this run, lender and round, and signed by the
        lender's key; and the attestation itself (never None by then)."""
        what = " or ".join(kinds)
        if attestation is None:
            raise AttestationRejected(f"lender {lender} sent no signed {what}")
        body = attestation["body"]
        where = f"lender {lender}'s {what}" + (f" in round {rnd}" if rnd is not None else "")
        if body.get("type") not in kinds:
            raise AttestationRejected(f"{where} is of type {body.get('type')!r}")
        if (
            body.get("run") != self.run
            or body.get("lender") != lender
            or (rnd is not None and body.get("round") != rnd)
        ):
            raise AttestationRejected(f"{where} names another run, lender or round")
        public = self.public_keys.get(lender) or public_from_hex(attestation.get("public_key") or "")
        if not verify_signature(public, attestation["signature"], canonical(body)):
            raise AttestationRejected(f"{where}: the signature does not verify under the lender's key")
        return body, attestation

    def manifest(self, lender: int, manifest: dict, attestation: dict | None, append: bool = True) -> None:
        """Check a lender's signed manifest and register its key; on resume (append False) the key must be the one
        it registered before."""
        body, attestation = self._check(lender, attestation, (L.LENDER_MANIFEST,))
        if not append:
            if lender not in self.public_keys or public_hex(self.public_keys[lender]) != body.get("public_key"):
                raise AttestationRejected(f"lender {lender} came back with another key than the one it registered")
            return
        if body.get("public_key") != attestation.get("public_key"):
            raise AttestationRejected(f"lender {lender}'s manifest signs a public key other than the one it sent")
        for field in MANIFEST_FIELDS:
            if body.get(field) != manifest[field]:
                raise AttestationRejected(f"lender {lender}'s signed manifest disagrees with its manifest on {field}")
        self.public_keys[lender] = public_from_hex(body["public_key"])
        self.ledger.append_lender(L.LENDER_MANIFEST, lender, body, attestation["signature"])

    def round_started(self, rnd: int, roster: list[int], mechanism: dict) -> None:
        self.ledger.append_coordinator(L.ROUND_STARTED, {"round": rnd, "roster": roster, "mechanism": mechanism})

    def secagg_roster(self, rnd: int, signed: dict) -> None:
        self.ledger.append_coordinator(L.SECAGG_ROSTER, {"round": rnd, **signed})

    def reply(self, rnd: int, lender: int, plain: dict) -> dict:
        """A training reply: an update attestation, or a refusal when the lender declined. Returns the body."""
        if plain["metrics"].get("declined"):
            body, _ = self._check(lender, plain.get("attestation"), (L.LENDER_REFUSAL,), rnd)
            self.ledger.append_lender(L.LENDER_REFUSAL, lender, body, plain["attestation"]["signature"])
            return body
        body, _ = self._check(lender, plain.get("attestation"), (L.LENDER_UPDATE,), rnd)
        arrays = plain["arrays"]
        if body.get("update_hash") != arrays_hash(arrays) or body.get("bytes_sent") != arrays_bytes(arrays):
            raise AttestationRejected(f"lender {lender}'s update in round {rnd} differs from the one it signed")
        if body.get("shapes") != arrays_shapes(arrays):
            raise AttestationRejected(f"lender {lender}'s signed array shapes differ from what it sent")
        self.ledger.append_lender(L.LENDER_UPDATE, lender, body, plain["attestation"]["signature"])
        return body

    def rejected(self, rnd: int | None, lender: int, reason: str, stage: str = "train") -> None:
        """A lender left out: it failed, did not reply, its update was rejected (stage train), its evaluation failed
        (stage evaluate), or (round None, stage final) it sent no final statement."""
        self.ledger.append_coordinator(
            L.UPDATE_REJECTED,
            {"round": rnd, "lender": lender, "reason": reason, "stage": "final" if rnd is None else stage},
        )

    def aggregate(self, rnd: int, lenders: list[int], arrays, extra: dict | None = None) -> None:
        self.ledger.append_coordinator(
            L.AGGREGATE,
            {"round": rnd, "lenders": lenders, "model_hash": arrays_hash(numpy_arrays(arrays)), **(extra or {})},
        )

    def evaluation(self, rnd: int, lender: int, attestation: dict | None, model_hash: str) -> dict:
        body, attestation = self._check(lender, attestation, (L.LENDER_EVALUATION,), rnd)
        if body.get("model_hash") != model_hash:
            raise AttestationRejected(f"lender {lender} evaluated another model than round {rnd}'s")
        self.ledger.append_lender(L.LENDER_EVALUATION, lender, body, attestation["signature"])
        return body

    def round_finished(self, rnd: int, seconds: float) -> None:
        self.ledger.append_coordinator(L.ROUND_FINISHED, {"round": rnd, "seconds": round(seconds, 3)})

    def final(self, lender: int, attestation: dict | None) -> dict:
        body, attestation = self._check(lender, attestation, (L.LENDER_FINAL,))
        self.ledger.append_lender(L.LENDER_FINAL, lender, body, attestation["signature"])
        return body

    def finished(self, body: dict) -> None:
        self.ledger.append_coordinator(L.RUN_FINISHED, body)
