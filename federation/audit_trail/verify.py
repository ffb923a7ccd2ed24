"""`fedcredit verify RUN_DIR`: check a run folder without trusting the code path that produced it.

Reads only the ledger, the report, the public keys and the final model file. Checks, in order: every
ledger line is canonical JSON with the right sequence number, link and hash; every signature
verifies under the registered key of its signer; every lender-signed body names this run; no
manifest lists a prohibited field as used; every lender's epsilon, recomputed from its signed
privacy events with Google's dp_accounting (not the Opacus accountants used in training), equals
what was claimed and is within budget; the final model file is the one the ledger names; the report
is canonical, signed by the coordinator, bound to the ledger head and agrees with the ledger.
The first failed check raises VerificationFailed naming the entry and the check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import arrays_hash, canonical, config_hash
from federation.audit_trail.keys import COORDINATOR, lender_name, public_from_hex, signer_label, verify_signature
from federation.audit_trail.report import report_bytes, signed_part
from federation.card import CREDIT_CATEGORIES
from federation.config import RunConfig
from federation.errors import FedCreditError
from federation.policy import prohibited_mark
from federation.privacy import dpaccounting
from federation.privacy.accountant import default_delta
from federation.privacy.events import PrivacyEvent

MASKED = "masked"  # federation.messages.MASKED, not imported: the verifier runs without Flower

# Opacus (training) and dp_accounting (here) are different implementations of the same analysis; on
# the same events they agree within 1% (tests/test_accounting.py), so that is the tolerance here.
TOLERANCE = 0.01
ENTRY_KEYS = {"seq", "time", "type", "signer", "body", "prev", "hash", "signature"}


class VerificationFailed(FedCreditError):
    def __init__(self, where: str, check: str, message: str) -> None:
        super().__init__(f"{where}: check '{check}' failed: {message}")
        self.where, self.check = where, check


@dataclass
class VerifiedRun:
    entries: int
    lenders: int
    epsilons: dict[str, float]  # recomputed with dp_accounting
    accountant: str
    head: str

    def summary(self) -> str:
        eps = ", ".join(f"{k} {v:.3f}" for k, v in self.epsilons.items()) or "no DP"
        return (f"verified: {self.entries} ledger entries, chain intact, every signature valid; {self.lenders} lenders; "
                f"no prohibited field used; epsilon recomputed with dp_accounting ({self.accountant}): {eps}, each "
                f"within budget and equal to the reported value; report bound to ledger head {self.head[:16]}...")


def _load_keys(run_dir: Path, trusted: Path | None) -> dict[str, object]:
    folder = run_dir / "keys"
    if not (folder / f"{COORDINATOR}.pub").exists():
        raise VerificationFailed("keys", "files", f"{folder / (COORDINATOR + '.pub')} is missing")
    keys = {}
    for path in sorted(folder.glob("*.pub")):
        text = path.read_text().strip()
        if trusted is not None:
            registered = trusted / path.name
            if not registered.exists() or registered.read_text().strip() != text:
                raise VerificationFailed(f"keys/{path.name}", "trusted key", f"does not match {registered}")
        try:
            keys[path.stem] = public_from_hex(text)
        except ValueError as exc:
            raise VerificationFailed(f"keys/{path.name}", "key format", str(exc)) from None
    return keys


def _read_ledger(run_dir: Path) -> list[dict]:
    path = run_dir / "ledger.jsonl"
    if not path.exists():
        raise VerificationFailed("ledger.jsonl", "files", "the ledger is missing")
    raw = path.read_bytes()
    if not raw.endswith(b"\n"):
        raise VerificationFailed("ledger.jsonl", "format", "the ledger does not end with a complete line")
    entries = []
    for number, line in enumerate(raw[:-1].split(b"\n"), start=1):
        where = f"ledger line {number}"
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VerificationFailed(where, "format", f"not JSON ({exc})") from None
        if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
            raise VerificationFailed(where, "format", f"an entry has exactly the fields {sorted(ENTRY_KEYS)}")
        try:
            exact = canonical(entry) == line
        except ValueError:
            exact = False
        if not exact:
            raise VerificationFailed(where, "format", "not in canonical JSON form (bytes were altered)")
        entries.append(entry)
    if not entries:
        raise VerificationFailed("ledger.jsonl", "format", "the ledger is empty")
    return entries


def _describe(entry: dict) -> str:
    body = entry.get("body") if isinstance(entry.get("body"), dict) else {}
    who = f" of lender {body['lender']}" if "lender" in body and isinstance(body.get("lender"), int) else ""
    rnd = f", round {body['round']}" if "round" in body else ""
    return f"ledger entry {entry.get('seq')} ({entry.get('type')}{who}{rnd})"


def _check_chain(entries: list[dict], keys: dict) -> tuple[str, RunConfig]:
    prev = L.GENESIS
    run_id, cfg = None, None
    for index, entry in enumerate(entries):
        where = _describe(entry)
        if entry["seq"] != index:
            raise VerificationFailed(where, "sequence", f"sequence number {entry['seq']} at position {index}")
        if entry["prev"] != prev:
            raise VerificationFailed(where, "chain", "does not link to the previous entry's hash")
        if entry["hash"] != L.entry_hash(entry):
            raise VerificationFailed(where, "hash", "its hash does not match its content")
        if entry["type"] not in L.ENTRY_TYPES or not isinstance(entry["body"], dict):
            raise VerificationFailed(where, "type", f"unknown entry type {entry['type']!r}")
        body = entry["body"]
        if entry["type"] in L.LENDER_SIGNED:
            lender = body.get("lender")
            if entry["signer"] != signer_label(lender):
                raise VerificationFailed(where, "signer", f"signed by {entry['signer']}, but the body is lender {lender}'s")
            key = keys.get(lender_name(lender)) if isinstance(lender, int) else None
            if key is None:
                raise VerificationFailed(where, "signature", f"no public key registered for lender {lender}")
            if body.get("run") != run_id:
                raise VerificationFailed(where, "run", "the signed body names another run")
        else:
            if entry["signer"] != COORDINATOR:
                raise VerificationFailed(where, "signer", f"a {entry['type']} entry must be signed by the coordinator")
            key = keys[COORDINATOR]
        if not verify_signature(key, entry["signature"], L.signed_bytes(entry)):
            raise VerificationFailed(where, "signature", f"the signature does not verify under {entry['signer']}'s key")
        if index == 0:
            if entry["type"] != L.RUN_STARTED:
                raise VerificationFailed(where, "run", "the ledger must start with run_started")
            run_id = body.get("run")
            if config_hash(body.get("config", {})) != run_id:
                raise VerificationFailed(where, "config hash", "the recorded configuration does not hash to the run id")
            try:
                cfg = RunConfig.from_record(body["config"])
            except FedCreditError as exc:
                raise VerificationFailed(where, "config", str(exc)) from None
        if entry["type"] == L.LENDER_MANIFEST:
            registered = keys.get(lender_name(body["lender"]))
            if public_from_hex(body.get("public_key", "")).public_bytes_raw() != registered.public_bytes_raw():
                raise VerificationFailed(where, "key", "the manifest's public key differs from the registered one")
            _check_policy(where, body)
        prev = entry["hash"]
    return run_id, cfg


def _check_policy(where: str, body: dict) -> None:
    for field in body.get("fields_used", []):
        if field.get("category") not in CREDIT_CATEGORIES:
            raise VerificationFailed(where, "policy", f"field '{field.get('name')}' of category {field.get('category')} was used")
        marked = prohibited_mark(str(field.get("name")))
        if marked:
            raise VerificationFailed(where, "policy", f"used field '{field['name']}' names {marked[0]} data ('{marked[1]}')")


def _check_privacy(entries: list[dict], cfg: RunConfig) -> dict[str, float]:
    if not cfg.dp:
        return {}
    out = {}
    accountant = "rdp" if cfg.accountant == "rdp" else "pld"  # dp_accounting's counterpart of Opacus' PRV
    if cfg.dp_level == "lender":
        events, where, delta = [], "ledger", cfg.delta or default_delta(cfg.lenders)
        for entry in entries:
            if entry["type"] == L.AGGREGATE and "noise_event" in entry["body"]:
                events.append(PrivacyEvent.from_dict(entry["body"]["noise_event"]))
                delta = entry["body"].get("delta", delta)
                where = _describe(entry)
        finished = next((e for e in entries if e["type"] == L.RUN_FINISHED), None)
        claimed = (finished or {}).get("body", {}).get("epsilon", {}).get("federation", 0.0)
        eps = dpaccounting.epsilon(events, delta, accountant)
        _compare(where, "federation", eps, claimed, cfg.epsilon)
        return {"federation": eps}
    for lender in range(cfg.lenders):
        events, budget, delta, seen = [], cfg.budget_for(lender), None, set()
        for entry in entries:
            body = entry["body"]
            if entry["type"] not in (L.LENDER_UPDATE, L.BUDGET_REFUSAL) or body.get("lender") != lender:
                continue
            where = _describe(entry)
            if body.get("budget") != budget:
                raise VerificationFailed(where, "budget", f"states budget {body.get('budget')}, the run gave {budget}")
            if entry["type"] == L.LENDER_UPDATE:
                if len(body.get("events", [])) != 1:
                    raise VerificationFailed(where, "privacy events", "a DP update must carry exactly its round's event")
                # After a resume a round may be trained again from the same model with the same seed: the
                # identical update (same hash) is the same release, counted once. Any other is counted.
                release = (body.get("round"), body.get("update_hash"))
                if release not in seen:
                    seen.add(release)
                    try:
                        events.append(PrivacyEvent.from_dict(body["events"][0]))
                    except TypeError as exc:
                        raise VerificationFailed(where, "privacy events", str(exc)) from None
                claimed = body.get("epsilon")
            else:
                claimed = body.get("epsilon_spent")
            if delta is not None and body.get("delta") != delta:
                raise VerificationFailed(where, "delta", f"delta changed from {delta} to {body.get('delta')} during the run")
            delta = body.get("delta")
            if not isinstance(delta, (int, float)) or not 0 < delta < 1:
                raise VerificationFailed(where, "delta", f"delta {delta!r} is not in (0, 1)")
            eps = dpaccounting.epsilon(events, float(delta), accountant)
            _compare(where, f"lender {lender}", eps, claimed, budget)
        out[str(lender)] = dpaccounting.epsilon(events, float(delta), accountant) if events else 0.0
    return out


def _compare(where: str, who: str, recomputed: float, claimed, budget: float) -> None:
    if not isinstance(claimed, (int, float)) or not math.isclose(recomputed, claimed, rel_tol=TOLERANCE, abs_tol=1e-9):
        raise VerificationFailed(where, "epsilon", f"{who} claims epsilon {claimed}, its recorded events give {recomputed:.4f}")
    if claimed > budget or recomputed > budget * (1 + TOLERANCE):
        raise VerificationFailed(where, "budget", f"{who} spent epsilon {recomputed:.4f} against a budget of {budget}")


def _check_model(run_dir: Path, entries: list[dict]) -> str:
    finished = [e for e in entries if e["type"] == L.RUN_FINISHED]
    if len(finished) != 1 or finished[0] is not entries[-1]:
        raise VerificationFailed(_describe(entries[-1]), "finished", "the ledger must end with exactly one run_finished")
    model_hash = finished[0]["body"].get("model_hash")
    aggregates = [e for e in entries if e["type"] == L.AGGREGATE]
    if aggregates and aggregates[-1]["body"].get("model_hash") != model_hash:
        raise VerificationFailed(_describe(finished[0]), "model", "the final model is not the last aggregate")
    import torch

    try:
        state = torch.load(run_dir / "model.pt", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable model file is a failed check)
        raise VerificationFailed("model.pt", "model", f"cannot read the model file ({exc})") from None
    if arrays_hash({k: v.numpy() for k, v in state.items()}) != model_hash:
        raise VerificationFailed("model.pt", "model", "the model file's hash differs from the ledger's final model hash")
    return model_hash


def _read_report(run_dir: Path, keys: dict) -> dict:
    path = run_dir / "report.json"
    if not path.exists():
        raise VerificationFailed("report.json", "files", "the report is missing")
    raw = path.read_bytes()
    try:
        report = json.loads(raw)
        exact = isinstance(report, dict) and report_bytes(report) == raw
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        exact, report = False, None
    if not exact:
        raise VerificationFailed("report.json", "format", "not the canonical serialization of a report (bytes were altered)")
    if not verify_signature(keys[COORDINATOR], str(report.get("signature", "")), signed_part(report)):
        raise VerificationFailed("report.json", "signature", "the coordinator's signature does not verify")
    return report


def _check_report(report: dict, entries: list[dict], run_id: str, model_hash: str, epsilons: dict[str, float]) -> None:
    if report.get("ledger_head") != entries[-1]["hash"] or report.get("ledger_entries") != len(entries):
        raise VerificationFailed("report.json", "binding", "the report is not bound to this ledger's head")
    if report.get("run") != run_id or report.get("final_model_hash") != model_hash:
        raise VerificationFailed("report.json", "binding", "the report names another run or model")
    for detail in report.get("lender_details", []):
        lender = str(detail.get("lender"))
        if lender in epsilons and not math.isclose(detail.get("epsilon") or 0.0, epsilons[lender], rel_tol=TOLERANCE, abs_tol=1e-9):
            raise VerificationFailed("report.json", "epsilon", f"lender {lender}'s reported epsilon {detail.get('epsilon')} "
                                                               f"differs from the recomputed {epsilons[lender]:.4f}")
    fed = (report.get("privacy") or {}).get("federation")
    if "federation" in epsilons and not math.isclose((fed or {}).get("epsilon", -1), epsilons["federation"], rel_tol=TOLERANCE):
        raise VerificationFailed("report.json", "epsilon", "the federation's reported epsilon differs from the recomputed one")


def _check_secure_aggregation(report: dict, entries: list[dict], cfg) -> None:
    """The report's "secure aggregation on/off" is the run's setting, and every recorded update was sent
    that way: masked (one vector named 'masked') when on, the model's own arrays when off."""
    claimed = (report.get("privacy") or {}).get("secure_aggregation")
    if claimed is not cfg.secure_aggregation:
        raise VerificationFailed("report.json", "secure aggregation", f"the report says {claimed}, the run's "
                                 f"configuration {cfg.secure_aggregation}")
    for entry in entries:
        if entry["type"] == L.LENDER_UPDATE and (list(entry["body"].get("shapes", {})) == [MASKED]) is not claimed:
            raise VerificationFailed(_describe(entry), "secure aggregation", "the update was sent "
                                     + ("in the clear although secure aggregation was on" if claimed else
                                        "masked although secure aggregation was off"))


def verify_run(run_dir: str | Path, trusted_keys: str | Path | None = None) -> VerifiedRun:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VerificationFailed(str(run_dir), "files", "no such run folder")
    keys = _load_keys(run_dir, Path(trusted_keys) if trusted_keys else None)
    entries = _read_ledger(run_dir)
    run_id, cfg = _check_chain(entries, keys)
    report = _read_report(run_dir, keys)
    epsilons = _check_privacy(entries, cfg)
    model_hash = _check_model(run_dir, entries)
    _check_report(report, entries, run_id, model_hash, epsilons)
    _check_secure_aggregation(report, entries, cfg)
    lenders = len({e["body"]["lender"] for e in entries if e["type"] == L.LENDER_MANIFEST})
    return VerifiedRun(len(entries), lenders, epsilons, cfg.accountant if cfg.dp else "-", entries[-1]["hash"])
