"""The ledger: an append-only, hash-chained, signed record of a run (`ledger.jsonl`).

Each line is one entry in canonical JSON:
    seq, time, type, signer, body, prev (hash of the previous entry; 64 zeros for the first),
    hash = SHA-256 of canonical {seq, time, type, signer, body, prev},
    signature = the signer's Ed25519 signature.
The coordinator signs its entries' hash (so it vouches for the position in the chain too). A lender
signs the canonical bytes of its body, which names the run (config hash), the lender and the round,
so the coordinator can place it in the chain but cannot alter it. Changing any entry breaks its hash,
every later `prev`, and a signature; the coordinator-signed report binds the head hash.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit_trail.canonical import canonical, sha256_hex
from federation.audit_trail.keys import COORDINATOR, sign, signer_label

GENESIS = "0" * 64
# Entry types, and which are signed by a lender rather than the coordinator.
RUN_STARTED = "run_started"
LENDER_MANIFEST = "lender_manifest"
ROUND_STARTED = "round_started"  # the round's roster: the lenders the coordinator asked, and what it asked for
SECAGG_ROSTER = "secagg_roster"  # secure aggregation: the roster and threshold every lender checked, as it was signed
LENDER_UPDATE = "lender_update"
LENDER_REFUSAL = "lender_refusal"  # a lender declined before any release, naming the limit
UPDATE_REJECTED = (
    "update_rejected"  # a lender left out of a round: it failed, did not reply, or its update was rejected
)
AGGREGATE = "aggregate"
LENDER_EVALUATION = "lender_evaluation"  # a lender's scores of the round's model on its own test records
ROUND_FINISHED = "round_finished"
RUN_RESUMED = "run_resumed"  # a coordinator restarted from its last checkpoint after a crash
LENDER_FINAL = "lender_final"  # a lender's own count of its releases in this run (after which it trains no more)
RUN_FINISHED = "run_finished"
ENTRY_TYPES = (
    RUN_STARTED,
    LENDER_MANIFEST,
    ROUND_STARTED,
    SECAGG_ROSTER,
    LENDER_UPDATE,
    LENDER_REFUSAL,
    UPDATE_REJECTED,
    AGGREGATE,
    LENDER_EVALUATION,
    ROUND_FINISHED,
    RUN_RESUMED,
    LENDER_FINAL,
    RUN_FINISHED,
)
LENDER_SIGNED = (LENDER_MANIFEST, LENDER_UPDATE, LENDER_REFUSAL, LENDER_EVALUATION, LENDER_FINAL)


def last_entry(path: Path) -> dict[str, Any]:
    """The last entry of the ledger at `path`, parsed (not the whole ledger: a second of a 1,000-lender run's end).
    Raises ValueError (json's) when the last line is not JSON, OSError when the file cannot be read."""
    return json.loads(path.read_text().rstrip("\n").rpartition("\n")[2])


def entry_hash(entry: dict[str, Any]) -> str:
    return sha256_hex(canonical({k: entry[k] for k in ("seq", "time", "type", "signer", "body", "prev")}))


def signed_bytes(entry: dict[str, Any]) -> bytes:
    """What the signature covers: the body for lender entries, the entry hash for the coordinator's."""
    if entry["type"] in LENDER_SIGNED:
        return canonical(entry["body"])
    return bytes.fromhex(entry["hash"])


@dataclass
class Ledger:
    path: Path
    coordinator_key: Ed25519PrivateKey
    head: str = GENESIS
    seq: int = 0

    def append_coordinator(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        entry = self._entry(kind, COORDINATOR, body)
        entry["signature"] = sign(self.coordinator_key, bytes.fromhex(entry["hash"]))
        return self._write(entry)

    def append_lender(self, kind: str, lender: int, body: dict[str, Any], signature: str) -> dict[str, Any]:
        """An entry whose body and signature come from lender `lender` (checked by the caller)."""
        if kind not in LENDER_SIGNED:
            raise ValueError(f"{kind} is not a lender-signed entry type")
        entry = self._entry(kind, signer_label(lender), body)
        entry["signature"] = signature
        return self._write(entry)

    def _entry(self, kind: str, signer: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind not in ENTRY_TYPES:
            raise ValueError(f"unknown ledger entry type {kind}")
        entry = {
            "seq": self.seq,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "type": kind,
            "signer": signer,
            "body": body,
            "prev": self.head,
        }
        entry["hash"] = entry_hash(entry)
        return entry

    def _write(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self.path.open("ab") as fh:
            fh.write(canonical(entry) + b"\n")
        self.head, self.seq = entry["hash"], self.seq + 1
        return entry
