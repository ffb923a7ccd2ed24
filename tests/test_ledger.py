"""The signed ledger, the privacy report and the verifier: round trip, keys, tampering with bytes, and each check
of the verifier on its own (a forgery that gets past every other check)."""

import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedcredit.cli import app
from fedcredit.runner import run
from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import canonical
from federation.audit_trail.keys import keys_dir_for, sign
from federation.audit_trail.verify import EXIT_NOT_PINNED, VerificationFailed, verify_run
from federation.config import RunConfig
from federation.registry import load_registry
from tests.forge import Forger, copy_run, entries_of, lender_key


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ledger") / "run"
    return run(
        RunConfig(records=3000, lenders=3, rounds=2, epsilon=2.0, engine="inprocess", output_dir=str(out)),
        on_round=lambda s: None,
    )


@pytest.fixture
def run_copy(signed_run, tmp_path):
    """A private copy of the signed run, with every party's folder beside it, as in a real run."""
    return copy_run(signed_run, tmp_path / "run")


def registry_of(run_dir):
    return f"{run_dir}-registry.json"


def _write(run_dir, entries):
    (run_dir / "ledger.jsonl").write_bytes(b"".join(canonical(e) + b"\n" for e in entries))


def _fails(run_dir, check=None, where=None, registry=True):
    with pytest.raises(VerificationFailed) as info:
        verify_run(run_dir, registry_of(run_dir) if registry else None)
    if check:
        assert info.value.check == check, str(info.value)
    if where:
        assert where in info.value.where, str(info.value)
    return info.value


def test_round_trip_verifies_against_the_registry(signed_run):
    result = verify_run(signed_run, registry_of(signed_run))
    assert result.pinned and result.exit_code == 0
    assert result.entries == len(entries_of(signed_run)) and result.lenders == 3
    assert set(result.epsilons) == {"0", "1", "2"} and all(0 < e <= 2.0 * 1.01 for e in result.epsilons.values())


def test_without_a_registry_the_verifier_says_so_in_its_first_line_and_its_exit_code(signed_run):
    result = CliRunner().invoke(app, ["verify", str(signed_run)])
    assert result.exit_code == EXIT_NOT_PINNED == 3
    assert result.output.startswith("NOT PINNED"), result.output
    registry = load_registry(registry_of(signed_run))
    for who, fp in registry.fingerprints().items():  # every key it relied on, printed
        assert f"{who} {fp}" in " ".join(result.output.split())
    pinned = CliRunner().invoke(app, ["verify", str(signed_run), "--registry", registry_of(signed_run), "--json"])
    assert pinned.exit_code == 0 and json.loads(pinned.output)["pinned"] is True


def test_ledger_records_every_step_of_the_run(signed_run):
    entries = entries_of(signed_run)
    types = [e["type"] for e in entries]
    assert types[0] == L.RUN_STARTED and types[-1] == L.RUN_FINISHED
    assert types.count(L.LENDER_MANIFEST) == 3 and types.count(L.ROUND_STARTED) == 2
    assert types.count(L.LENDER_UPDATE) == 6 and types.count(L.AGGREGATE) == 2
    assert (
        types.count(L.LENDER_EVALUATION) == 6
        and types.count(L.ROUND_FINISHED) == 2
        and types.count(L.LENDER_FINAL) == 3
    )
    rosters = [e["body"]["roster"] for e in entries if e["type"] == L.ROUND_STARTED]
    assert rosters == [[0, 1, 2], [0, 1, 2]]
    update = next(e for e in entries if e["type"] == L.LENDER_UPDATE)
    body = update["body"]
    assert update["signer"] == f"lender:{body['lender']}" and body["release"] == 1 and len(body["request"]) == 64
    assert body["events"][0]["mechanism"] == "gaussian" and body["bytes_sent"] > 0 and len(body["update_hash"]) == 64
    manifest = next(e for e in entries if e["type"] == L.LENDER_MANIFEST)["body"]
    assert manifest["fields_refused"] and all(f["reason"] for f in manifest["fields_refused"])
    assert manifest["policy"]["max_epsilon"] == 2.0 and manifest["policy"]["registry_pinned"] is True
    finals = [e["body"] for e in entries if e["type"] == L.LENDER_FINAL]
    assert [f["releases"] for f in finals] == [2, 2, 2]


def test_each_party_keeps_its_own_secrets_0600_outside_the_run_folder(signed_run):
    keys = keys_dir_for(str(signed_run))
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700
    assert sorted(p.name for p in keys.iterdir()) == ["checkpoint.aesgcm", "coordinator.key"]
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in keys.iterdir())
    registry = load_registry(registry_of(signed_run))
    for lender in range(3):
        folder = signed_run.parent / "run-lenders" / f"lender_{lender:03d}"
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        secrets = [folder / "identity.key", folder / "commitment.key", *(folder / "state").rglob("*.json")]
        assert len(secrets) > 3 and all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in secrets)
        assert (folder / "identity.pub").read_text().strip() == registry.lenders[lender]
        assert (signed_run / "keys" / f"lender_{lender:03d}.pub").read_text().strip() == registry.lenders[lender]
    for path in signed_run.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path


def test_the_manifest_commits_to_the_records_without_a_plain_hash(signed_run):
    from federation.data import load_lender

    manifest = json.loads((signed_run / "manifests" / "lender_000.json").read_text())
    assert "data_hash" not in manifest and len(manifest["data_commitment"]) == 64
    cfg = RunConfig.from_record(entries_of(signed_run)[0]["body"]["config"])
    # An observer who guesses the records exactly can compute their plain hash, but not the commitment.
    plain = load_lender(cfg, 0).manifest["records_digest"]
    assert manifest["data_commitment"] != plain
    assert not any(plain in p.read_text(errors="ignore") for p in signed_run.rglob("*") if p.is_file())


def test_report_speaks_plainly_says_what_the_epsilon_covers_and_is_signed(signed_run):
    report = json.loads((signed_run / "report.json").read_text())
    assert report["summary"][0].startswith("All 3 lenders stayed within epsilon 2 at delta")
    assert "record-level differential privacy protects each lender's training records" in report["summary"][0]
    assert any("0 raw records left any lender" in s for s in report["summary"])
    assert report["coverage"]["covers"] and any("test records" in s for s in report["coverage"]["outside"])
    assert report["ledger_head"] == entries_of(signed_run)[-1]["hash"]
    html = (signed_run / "report.html").read_text()
    assert 'id="summary"' in html and "What the epsilon covers" in html and "<svg" in html
    assert "<script" not in html and "data:image" not in html and report["run"] in html


def _files(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=st.integers(0, 10_000), position=st.floats(0, 1, exclude_max=True), flip=st.integers(1, 255))
def test_any_single_changed_byte_in_any_file_fails_verification(run_copy, pick, position, flip):
    names = _files(run_copy)
    path = run_copy / names[pick % len(names)]
    original = path.read_bytes()
    index = int(position * len(original))
    changed = bytearray(original)
    changed[index] ^= flip
    path.write_bytes(bytes(changed))
    try:
        with pytest.raises(VerificationFailed):
            verify_run(run_copy, registry_of(run_copy))
    finally:
        path.write_bytes(original)


def test_the_byte_test_reaches_every_file(run_copy):
    names = _files(run_copy)
    assert {
        "ledger.jsonl",
        "report.json",
        "report.html",
        "privacy.json",
        "epsilon.csv",
        "privacy_events.jsonl",
        "metrics.csv",
        "config.json",
        "model.pt",
        "model.json",
        "rounds.jsonl",
        "manifests/lender_000.json",
        "keys/coordinator.pub",
        "keys/lender_002.pub",
    } <= set(names)


def test_a_signature_respelled_in_upper_case_fails(run_copy):
    # Found by the random-byte test: hex decoding reads "AB" as "ab", so a case flip inside a signature
    # changed the file yet verified. Every spelling but the one written must fail.
    for name in ("ledger.jsonl", "report.json"):
        path = run_copy / name
        original = path.read_bytes()
        start = re.search(rb'"signature": ?"', original).end()
        letter = next(i for i in range(start, start + 128) if chr(original[i]) in "abcdef")
        changed = bytearray(original)
        changed[letter] ^= 32
        path.write_bytes(bytes(changed))
        try:
            _fails(run_copy, "signature")
        finally:
            path.write_bytes(original)


def test_deleted_swapped_and_truncated_entries_fail(run_copy):
    entries = entries_of(run_copy)
    _write(run_copy, entries[:5] + entries[6:])
    _fails(run_copy, "sequence")
    swapped = list(entries)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    _write(run_copy, swapped)
    _fails(run_copy, "sequence")
    _write(run_copy, entries[:-1])
    _fails(run_copy)


def test_the_forger_is_exact_an_unchanged_rewrite_verifies(run_copy):
    Forger(run_copy).write(entries_of(run_copy))
    assert verify_run(run_copy, registry_of(run_copy)).pinned


# ---- each check on its own ------------------------------------------------------------------------


def test_an_entry_rehashed_with_its_sequence_fixed_but_not_its_link_fails_only_the_chain_check(run_copy):
    entries = entries_of(run_copy)
    i = next(i for i, e in enumerate(entries) if e["type"] == L.LENDER_EVALUATION)
    forger = Forger(run_copy)
    entries = forger.rechain(entries[:i] + entries[i + 1 :])  # every link, hash and coordinator signature right
    entries[i]["prev"] = entries_of(run_copy)[i]["hash"]  # ...but this one still links to the entry removed
    entries[i]["hash"] = L.entry_hash(entries[i])
    if entries[i]["type"] not in L.LENDER_SIGNED:
        entries[i]["signature"] = sign(forger.coordinator, bytes.fromhex(entries[i]["hash"]))
    for j in range(i + 1, len(entries)):
        entries[j]["prev"] = entries[j - 1]["hash"]
        entries[j]["hash"] = L.entry_hash(entries[j])
        if entries[j]["type"] not in L.LENDER_SIGNED:
            entries[j]["signature"] = sign(forger.coordinator, bytes.fromhex(entries[j]["hash"]))
    _write(run_copy, entries)
    _fails(run_copy, "chain", where=f"ledger entry {i} ")


@pytest.mark.parametrize("factor", [1.02, 1.2, 0.95, 0.6])
def test_a_lender_claim_2_to_40_percent_off_its_events_fails_only_the_epsilon_check(run_copy, factor):
    entries = entries_of(run_copy)
    i = min(i for i, e in enumerate(entries) if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 0)
    assert entries[i]["body"]["epsilon"] * factor < 2.0  # within budget: only the epsilon check can catch it
    entries[i]["body"]["epsilon"] *= factor  # lender 0 colludes and signs the false claim
    Forger(run_copy).colluding_with(0).write(entries)
    _fails(run_copy, "epsilon", where=f"ledger entry {i} ")


def test_a_manifest_signed_by_the_wrong_lender_fails(run_copy):
    entries = entries_of(run_copy)
    i = next(i for i, e in enumerate(entries) if e["type"] == L.LENDER_MANIFEST and e["body"]["lender"] == 1)
    entries[i]["signature"] = sign(lender_key(run_copy, 0), canonical(entries[i]["body"]))
    Forger(run_copy).write(entries)
    err = _fails(run_copy, "signature", where=f"ledger entry {i} (lender_manifest of lender 1")
    assert "lender:1" in str(err)


def test_a_lender_signing_a_prohibited_field_as_used_fails_policy(run_copy):
    entries = entries_of(run_copy)
    i = next(i for i, e in enumerate(entries) if e["type"] == L.LENDER_MANIFEST and e["body"]["lender"] == 0)
    entries[i]["body"]["fields_used"].append({"name": "gender", "category": "credit_history"})
    Forger(run_copy).colluding_with(0).write(entries)
    _fails(run_copy, "policy")
    entries[i]["body"]["fields_used"][-1] = {"name": "is_female", "category": "credit_history"}  # the lexicon's
    Forger(run_copy).colluding_with(0).write(entries)
    _fails(run_copy, "policy")


def test_a_signed_overspend_fails_the_budget_check(run_copy):
    from federation.privacy import dpaccounting
    from federation.privacy.events import PrivacyEvent

    entries = entries_of(run_copy)
    mine = [i for i, e in enumerate(entries) if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 0]
    events = []
    for i in mine:  # far less noise, honestly accounted: the claim is right, and over budget
        body = entries[i]["body"]
        body["events"][0]["noise_multiplier"] /= 3
        events.append(PrivacyEvent.from_dict(body["events"][0]))
        body["epsilon"] = dpaccounting.epsilon(events, body["delta"], "rdp")
    Forger(run_copy).colluding_with(0).write(entries)
    _fails(run_copy, "budget")


def test_a_report_from_another_run_fails(run_copy, tmp_path):
    other = run(
        RunConfig(records=3000, lenders=3, rounds=1, engine="inprocess", output_dir=str(tmp_path / "other")),
        on_round=lambda s: None,
    )
    shutil.copy(other / "report.json", run_copy / "report.json")
    _fails(run_copy, "signature")  # another coordinator key signed it


def test_a_replaced_model_fails_even_with_its_hash_rewritten(run_copy):
    import torch

    state = torch.load(run_copy / "model.pt")
    state[next(iter(state))] += 0.001
    torch.save(state, run_copy / "model.pt")
    _fails(run_copy, "files")  # the signed final entry names the old file
    Forger(run_copy).write(entries_of(run_copy))  # the coordinator re-hashes the new file into its final entry
    _fails(run_copy, "model")  # but the model is not the last aggregate


def test_verify_and_report_commands(run_copy):
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(run_copy), "--registry", registry_of(run_copy)])
    assert ok.exit_code == 0 and ok.output.startswith("verified:"), ok.output
    (run_copy / "report.html").unlink()
    again = runner.invoke(app, ["report", str(run_copy), "--registry", registry_of(run_copy)])
    assert again.exit_code == 0 and (run_copy / "report.html").exists(), again.output
    entries = entries_of(run_copy)
    entries[3]["body"]["round"] = 7
    _write(run_copy, entries)
    bad = runner.invoke(app, ["verify", str(run_copy), "--registry", registry_of(run_copy)])
    assert bad.exit_code == 1 and "ledger entry 3" in bad.output and "check 'hash'" in bad.output
    (run_copy / "report.html").unlink()
    refused = runner.invoke(app, ["report", str(run_copy)])
    assert refused.exit_code == 2 and "does not verify" in refused.output and not (run_copy / "report.html").exists()
    missing = runner.invoke(app, ["verify", str(run_copy / "nowhere")])
    assert missing.exit_code == 2 and "no such run folder" in missing.output


def test_a_malformed_registry_or_key_fails_cleanly(run_copy):
    runner = CliRunner()
    bad = run_copy.parent / "bad-registry.json"
    bad.write_bytes(b"\xff\xfe not utf-8")
    result = runner.invoke(app, ["verify", str(run_copy), "--registry", str(bad)])
    assert result.exit_code == 2 and "not a JSON file" in result.output and "Traceback" not in result.output
    registry = json.loads(Path(registry_of(run_copy)).read_text())
    registry["lenders"]["1"] = "zz" * 32
    bad.write_text(json.dumps(registry))
    result = runner.invoke(app, ["verify", str(run_copy), "--registry", str(bad)])
    assert result.exit_code == 2 and "lender 1" in result.output
    entries = entries_of(run_copy)
    entries[0]["body"]["coordinator_public_key"] = "not hex"
    forger = Forger(run_copy)
    _write(run_copy, forger.rechain(entries))
    _fails(run_copy, "key format", registry=False)


def test_runs_with_refusals_and_lender_level_dp_verify(tmp_path):
    declining = run(
        RunConfig(
            records=2000,
            lenders=2,
            rounds=4,
            noise_multiplier=0.8,
            epsilon=1.5,
            engine="inprocess",
            output_dir=str(tmp_path / "declines"),
        ),
        on_round=lambda s: None,
    )
    refusals = [e["body"] for e in entries_of(declining) if e["type"] == L.LENDER_REFUSAL]
    assert refusals and all(r["limit"] == "budget" for r in refusals)
    verify_run(declining, registry_of(declining))
    lender_level = run(
        RunConfig(
            records=3000,
            lenders=3,
            rounds=2,
            dp_level="lender",
            epsilon=8.0,
            delta=1e-3,
            engine="inprocess",
            output_dir=str(tmp_path / "ll"),
        ),
        on_round=lambda s: None,
    )
    assert "federation" in verify_run(lender_level, registry_of(lender_level)).epsilons
    nodp = run(
        RunConfig(records=2000, lenders=2, rounds=1, dp=False, engine="inprocess", output_dir=str(tmp_path / "nodp")),
        on_round=lambda s: None,
    )
    assert verify_run(nodp, registry_of(nodp)).epsilons == {}


def test_coordinator_refuses_an_update_that_differs_from_what_the_lender_signed(tmp_path, monkeypatch):
    import clients.dp_round as dp_round
    from server.errors import RunFailed

    honest = dp_round.update_body

    def lying(*args, **kwargs):
        body = honest(*args, **kwargs)
        return {**body, "update_hash": "0" * 64}

    monkeypatch.setattr(dp_round, "update_body", lying)
    out = tmp_path / "run"
    with pytest.raises(RunFailed, match="differs from the one it signed"):
        run(
            RunConfig(records=2000, lenders=2, rounds=1, engine="inprocess", output_dir=str(out)),
            on_round=lambda s: None,
        )
    # nothing half-written left behind: no run folder, no keys, no lender folders, no registry
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_views_lender_index_finds_what_a_scan_of_every_entry_finds():
    """RunView indexes the entries by the lender their body names (report and verifier ask for every lender); a
    ledger may name a lender oddly (1.0, true, "1", [1], no body at all): the index must find exactly what comparing
    every entry's body["lender"] == lender finds, in ledger order."""
    from federation.audit_trail import ledger as L
    from federation.audit_trail.run_view import RunView

    odd = [1, 1.0, True, "1", [1], {"a": 1}, None, float("nan"), 2]
    entries = [{"type": L.RUN_STARTED, "body": {"config": {"lenders": 3}}}]
    for rnd in (1, 2):
        entries.append({"type": L.ROUND_STARTED, "body": {"round": rnd, "roster": [0, 1, 2]}})
        for k, lender in enumerate(odd):
            kind = (L.LENDER_UPDATE, L.LENDER_REFUSAL, L.LENDER_EVALUATION)[k % 3]
            entries.append({"type": kind, "body": {"lender": lender, "round": rnd, "k": k}})
        entries.append({"type": L.LENDER_UPDATE, "body": "not a dict"})
        entries.append({"type": L.ROUND_FINISHED, "body": {"round": rnd}})
    entries.append({"type": L.LENDER_REFUSAL, "body": {"lender": 1, "outside": True}})  # outside any attempt
    view = RunView(entries)
    for lender in (0, 1, 2):
        scanned = [
            e
            for a in view.attempts
            for e in a.entries
            if isinstance(e["body"], dict) and e["body"].get("lender") == lender
        ]
        assert [e for _, e in view.of_lender(lender)] == scanned
        assert [e for _, e in view.of_lender(lender, L.LENDER_UPDATE)] == [
            e for e in scanned if e["type"] == L.LENDER_UPDATE
        ]
        everywhere = [e for e in view.entries if isinstance(e["body"], dict) and e["body"].get("lender") == lender]
        assert view.entries_naming(lender, L.LENDER_REFUSAL) == [e for e in everywhere if e["type"] == L.LENDER_REFUSAL]
    assert len(view.of_lender(1)) == 2 * 3  # 1, 1.0 and True, in both rounds
    assert view.entries_naming(1, L.LENDER_REFUSAL)[-1]["body"].get("outside")
