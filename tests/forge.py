"""A coordinator rewriting its own run folder, as well as it can.

It holds the coordinator's private key (it is the coordinator) and, where a test says so, a colluding lender's key
or a whole set of fresh keys of its own making. After an edit it renumbers, re-links, re-hashes and re-signs the
ledger, re-derives every file of the folder with fedcredit's own code, re-hashes them into the final entry and
re-signs the report: whatever still fails verification is caught by a check of meaning, not by a stale hash.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import canonical
from federation.audit_trail.derive import run_files
from federation.audit_trail.keys import keys_dir_for, load_or_create, public_hex, sign
from federation.audit_trail.report import build_report, render_html, report_bytes, sign_report
from federation.audit_trail.run_view import RunView


def entries_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "ledger.jsonl").read_text().splitlines()]


def lender_key(run_dir: Path, lender: int) -> Ed25519PrivateKey:
    """A lender's own identity key (for tests where that lender colludes with the coordinator)."""
    return load_or_create(Path(f"{run_dir}-lenders") / f"lender_{lender:03d}", "identity")


def copy_run(run_dir: Path, copy: Path) -> Path:
    """A copy of a run folder at `copy`, with every party's folder beside it (keys, lenders) and its registry, as a
    run leaves them: for a test to rewrite without touching the run its module shares."""
    shutil.copytree(run_dir, copy)
    for suffix in ("-keys", "-lenders"):
        shutil.copytree(f"{run_dir}{suffix}", f"{copy}{suffix}")
    shutil.copy(f"{run_dir}-registry.json", f"{copy}-registry.json")
    return copy


class Forger:
    def __init__(self, run_dir: Path, coordinator: Ed25519PrivateKey | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.coordinator = coordinator or load_or_create(keys_dir_for(str(run_dir)), "coordinator")
        self.lenders: dict[int, Ed25519PrivateKey] = {}  # keys it may sign lender bodies with

    def with_fresh_keys(self, lenders: list[int]) -> Forger:
        """New keys for everyone: the coordinator's and every lender's (no registry can vouch for them)."""
        self.coordinator = Ed25519PrivateKey.generate()
        self.lenders = {lender: Ed25519PrivateKey.generate() for lender in lenders}
        return self

    def colluding_with(self, lender: int) -> Forger:
        self.lenders[lender] = lender_key(self.run_dir, lender)
        return self

    def write(self, entries: list[dict], tamper: dict[str, bytes] | None = None, rechain: bool = True) -> None:
        """Write `entries` as the run's ledger and everything derived from it; `tamper`: files written with this
        content instead of the derived one (and hashed as such into the final entry)."""
        entries = [json.loads(json.dumps(e)) for e in entries]
        for entry in entries:
            body = entry["body"]
            if entry["type"] == L.RUN_STARTED:
                body["coordinator_public_key"] = public_hex(self.coordinator)
            if entry["type"] in L.LENDER_SIGNED and body.get("lender") in self.lenders:
                key = self.lenders[body["lender"]]
                if entry["type"] == L.LENDER_MANIFEST:
                    body["public_key"] = public_hex(key)
                entry["signature"] = sign(key, canonical(body))
        *prefix, finish = entries
        finish["body"].pop("files", None)
        view = RunView([*prefix, finish])
        import torch

        arrays = {k: v.numpy() for k, v in torch.load(self.run_dir / "model.pt", weights_only=True).items()}
        files = run_files(view, finish["body"], arrays)
        files.update(tamper or {})
        for folder in ("manifests", "keys"):
            shutil.rmtree(self.run_dir / folder, ignore_errors=True)
        for name, data in files.items():
            path = self.run_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        model = (self.run_dir / "model.pt").read_bytes()
        finish["body"]["model_file_sha256"] = hashlib.sha256(model).hexdigest()
        finish["body"]["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
        finish["body"]["files"]["model.pt"] = finish["body"]["model_file_sha256"]
        if rechain:
            self.rechain(entries)
        (self.run_dir / "ledger.jsonl").write_bytes(b"".join(canonical(e) + b"\n" for e in entries))
        report = sign_report(build_report(entries), self.coordinator)
        (self.run_dir / "report.json").write_bytes(report_bytes(report))
        (self.run_dir / "report.html").write_text(render_html(report))

    def rechain(self, entries: list[dict], start: int = 0) -> list[dict]:
        for i in range(start, len(entries)):
            entries[i]["seq"] = i
            entries[i]["prev"] = entries[i - 1]["hash"] if i else L.GENESIS
            entries[i]["hash"] = L.entry_hash(entries[i])
            if entries[i]["type"] not in L.LENDER_SIGNED:
                entries[i]["signature"] = sign(self.coordinator, bytes.fromhex(entries[i]["hash"]))
        return entries

    def sign_report(self, report: dict) -> None:
        """Write a report of the coordinator's own making, signed, with the page it renders."""
        report = sign_report({k: v for k, v in report.items() if k != "signature"}, self.coordinator)
        (self.run_dir / "report.json").write_bytes(report_bytes(report))
        (self.run_dir / "report.html").write_text(render_html(report))


def restate_privacy(entries: list[dict]) -> list[dict]:
    """What a lying coordinator also does after dropping or editing releases: rewrite its own summary (privacy
    per lender, final scores) to match what is left, so only the lenders' own signatures stand in its way."""
    from federation.audit_trail.run_view import global_scores
    from federation.privacy.accountant import epsilons
    from federation.privacy.events import PrivacyEvent

    view = RunView(entries)
    finish = entries[-1]["body"]
    units = finish["privacy"].get("units", {})
    for name, unit in units.items():
        if name == "federation":
            continue
        releases = view.releases(int(name))
        events = [PrivacyEvent.from_dict(e) for b in releases for e in b["events"]]
        both = epsilons(events, unit["delta"]) if events else {"rdp": 0.0, "prv": 0.0}
        last = releases[-1]["events"][0] if releases else {}
        unit.update(
            {
                "epsilon": both["rdp"],
                "epsilon_rdp": both["rdp"],
                "epsilon_prv": both["prv"],
                "rounds_released": len(events),
                "steps": sum(e.steps for e in events),
                "noise_multiplier": last.get("noise_multiplier"),
                "sample_rate": last.get("sample_rate"),
                "noise": releases[-1].get("noise") if releases else None,
            }
        )
        final = view.finals.get(int(name))
        if final is not None:  # what the lender signed stays as it signed it
            unit.update(
                {"epsilon": final["epsilon"], "epsilon_rdp": final["epsilon_rdp"], "epsilon_prv": final["epsilon_prv"]}
            )
    complete = view.complete_rounds()
    if complete:
        finish["final_metrics"] = global_scores(complete[-1])
    return entries
