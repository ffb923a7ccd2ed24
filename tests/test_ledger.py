"""The signed ledger, the privacy report and the verifier: round trip and tampering."""

import json
import os
import re
import shutil
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import canonical
from federation.audit_trail.keys import keys_dir_for, load_or_create, sign
from federation.audit_trail.verify import VerificationFailed, verify_run
from federation.cli import app
from federation.config import RunConfig
from federation.runner import run


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ledger") / "run"
    return run(RunConfig(records=2000, lenders=2, rounds=2, epsilon=2.0, engine="inprocess", output_dir=str(out)),
               on_round=lambda s: None)


@pytest.fixture
def run_copy(signed_run, tmp_path):
    """A private copy of the signed run (its keys folder beside it, as in a real run)."""
    copy = tmp_path / "run"
    shutil.copytree(signed_run, copy)
    shutil.copytree(f"{signed_run}-keys", f"{copy}-keys")
    return copy


def _entries(run_dir):
    return [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]


def _write(run_dir, entries):
    (run_dir / "ledger.jsonl").write_bytes(b"".join(canonical(e) + b"\n" for e in entries))


def _rechain(entries, start, coordinator_key=None):
    """What a forger does after editing entry `start`: recompute every hash and link from there on
    (re-signing coordinator entries only if it holds the coordinator's key)."""
    for i in range(start, len(entries)):
        entries[i]["prev"] = entries[i - 1]["hash"] if i else L.GENESIS
        entries[i]["hash"] = L.entry_hash(entries[i])
        if coordinator_key is not None and entries[i]["type"] not in L.LENDER_SIGNED:
            entries[i]["signature"] = sign(coordinator_key, bytes.fromhex(entries[i]["hash"]))
    return entries


def _fails(run_dir, check=None, where=None):
    with pytest.raises(VerificationFailed) as info:
        verify_run(run_dir)
    if check:
        assert info.value.check == check, str(info.value)
    if where:
        assert where in info.value.where, str(info.value)
    return info.value


def test_round_trip_verifies(signed_run):
    result = verify_run(signed_run)
    assert result.entries == len(_entries(signed_run)) and result.lenders == 2
    assert set(result.epsilons) == {"0", "1"} and all(0 < e <= 2.0 * 1.01 for e in result.epsilons.values())


def test_ledger_records_every_step_of_the_run(signed_run):
    types = [e["type"] for e in _entries(signed_run)]
    assert types[0] == L.RUN_STARTED and types[-1] == L.RUN_FINISHED
    assert types.count(L.LENDER_MANIFEST) == 2 and types.count(L.ROUND_STARTED) == 2
    assert types.count(L.LENDER_UPDATE) == 4 and types.count(L.AGGREGATE) == 2
    update = next(e for e in _entries(signed_run) if e["type"] == L.LENDER_UPDATE)
    body = update["body"]
    assert update["signer"] == f"lender:{body['lender']}"
    assert body["events"][0]["mechanism"] == "gaussian" and body["bytes_sent"] > 0 and len(body["update_hash"]) == 64
    manifest = next(e for e in _entries(signed_run) if e["type"] == L.LENDER_MANIFEST)["body"]
    assert manifest["fields_refused"] and all(f["reason"] for f in manifest["fields_refused"])


def test_private_keys_are_0600_outside_the_run_folder_and_never_in_it(signed_run):
    keys = keys_dir_for(str(signed_run))
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700
    for path in keys.glob("*.key"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in keys.glob("*.key")) == ["coordinator.key", "lender_000.key", "lender_001.key"]
    for path in signed_run.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    assert sorted(p.name for p in (signed_run / "keys").glob("*.pub")) == ["coordinator.pub", "lender_000.pub", "lender_001.pub"]


def test_report_summary_speaks_plainly_and_is_signed(signed_run):
    report = json.loads((signed_run / "report.json").read_text())
    assert report["summary"][0].startswith("All 2 lenders stayed within epsilon 2 at delta")
    assert any("0 raw records left any lender" in s for s in report["summary"])
    assert report["ledger_head"] == _entries(signed_run)[-1]["hash"]
    html = (signed_run / "report.html").read_text()
    assert 'id="summary"' in html and "data:image/png;base64," in html and "<script" not in html


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["ledger.jsonl", "report.json"]), position=st.floats(0, 1, exclude_max=True),
       flip=st.integers(1, 255))
def test_any_single_changed_byte_fails_verification(run_copy, which, position, flip):
    path = run_copy / which
    original = path.read_bytes()
    index = int(position * len(original))
    changed = bytearray(original)
    changed[index] ^= flip
    path.write_bytes(bytes(changed))
    try:
        with pytest.raises(VerificationFailed):
            verify_run(run_copy)
    finally:
        path.write_bytes(original)


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


def test_deleted_entry_fails(run_copy):
    entries = _entries(run_copy)
    _write(run_copy, entries[:5] + entries[6:])
    _fails(run_copy, "sequence")


def test_swapped_entries_fail(run_copy):
    entries = _entries(run_copy)
    entries[5], entries[6] = entries[6], entries[5]
    _write(run_copy, entries)
    _fails(run_copy, "sequence")


def test_truncated_ledger_fails(run_copy):
    entries = _entries(run_copy)
    _write(run_copy, entries[:-1])
    _fails(run_copy)


def test_edited_epsilon_rehashed_without_resigning_fails(run_copy):
    entries = _entries(run_copy)
    i = next(i for i, e in enumerate(entries) if e["type"] == L.LENDER_UPDATE)
    entries[i]["body"]["epsilon"] = entries[i]["body"]["epsilon"] / 2
    _write(run_copy, _rechain(entries, i))
    _fails(run_copy, "signature", where=f"ledger entry {i}")


def test_edited_final_epsilon_rehashed_even_with_coordinator_key_fails_the_report(run_copy):
    entries = _entries(run_copy)
    entries[-1]["body"]["epsilon"]["0"] = 0.1
    coordinator = load_or_create(keys_dir_for(str(run_copy)), "coordinator")
    _write(run_copy, _rechain(entries, len(entries) - 1, coordinator))
    _fails(run_copy, "binding")  # the signed report names the old head


def test_manifest_signed_by_the_wrong_lender_fails(run_copy):
    entries = _entries(run_copy)
    i = next(i for i, e in enumerate(entries) if e["type"] == L.LENDER_MANIFEST and e["body"]["lender"] == 1)
    wrong = load_or_create(keys_dir_for(str(run_copy)), "lender_000")
    entries[i]["signature"] = sign(wrong, canonical(entries[i]["body"]))
    _write(run_copy, _rechain(entries, i))
    err = _fails(run_copy, "signature", where=f"ledger entry {i} (lender_manifest of lender 1")
    assert "lender:1" in str(err)


def test_a_lender_signing_a_prohibited_field_as_used_fails_policy(run_copy):
    entries = _entries(run_copy)
    i = next(i for i, e in enumerate(entries) if e["type"] == L.LENDER_MANIFEST and e["body"]["lender"] == 0)
    entries[i]["body"]["fields_used"].append({"name": "gender", "category": "credit_history"})
    key = load_or_create(keys_dir_for(str(run_copy)), "lender_000")
    entries[i]["signature"] = sign(key, canonical(entries[i]["body"]))
    _write(run_copy, _rechain(entries, i, load_or_create(keys_dir_for(str(run_copy)), "coordinator")))
    _fails(run_copy, "policy")


def test_a_signed_overspend_fails_the_budget_check(run_copy):
    entries = _entries(run_copy)
    i = max(i for i, e in enumerate(entries) if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 0)
    body = entries[i]["body"]
    body["events"][0]["noise_multiplier"] = body["events"][0]["noise_multiplier"] / 3  # far less noise
    from federation.privacy import dpaccounting
    from federation.privacy.events import PrivacyEvent

    events = [PrivacyEvent.from_dict(e["body"]["events"][0]) for e in entries[: i + 1]
              if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 0]
    body["epsilon"] = dpaccounting.epsilon(events, body["delta"], "rdp")  # an honest claim of an overspend
    body_key = load_or_create(keys_dir_for(str(run_copy)), "lender_000")
    entries[i]["signature"] = sign(body_key, canonical(body))
    _write(run_copy, _rechain(entries, i, load_or_create(keys_dir_for(str(run_copy)), "coordinator")))
    _fails(run_copy, "budget")


def test_a_signed_claim_of_secure_aggregation_in_a_plain_run_fails(run_copy):
    from federation.audit_trail.report import report_bytes, signed_part

    report = json.loads((run_copy / "report.json").read_text())
    report["privacy"]["secure_aggregation"] = True  # the coordinator's own (signed) false claim
    report["signature"] = sign(load_or_create(keys_dir_for(str(run_copy)), "coordinator"), signed_part(report))
    (run_copy / "report.json").write_bytes(report_bytes(report))
    _fails(run_copy, "secure aggregation")


def test_report_from_another_run_fails(run_copy, tmp_path):
    other = run(RunConfig(records=2000, lenders=2, rounds=1, engine="inprocess", output_dir=str(tmp_path / "other")),
                on_round=lambda s: None)
    shutil.copy(other / "report.json", run_copy / "report.json")
    _fails(run_copy, "signature")  # another coordinator key signed it


def test_replaced_model_file_fails(run_copy, tmp_path):
    import torch

    state = torch.load(run_copy / "model.pt")
    state[next(iter(state))] += 0.001
    torch.save(state, run_copy / "model.pt")
    _fails(run_copy, "model")


def test_verify_and_report_commands(run_copy):
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(run_copy)])
    assert ok.exit_code == 0 and "verified:" in ok.output
    (run_copy / "report.html").unlink()
    again = runner.invoke(app, ["report", str(run_copy)])
    assert again.exit_code == 0 and (run_copy / "report.html").exists()
    entries = _entries(run_copy)
    entries[3]["body"]["round"] = 7
    _write(run_copy, entries)
    bad = runner.invoke(app, ["verify", str(run_copy)])
    assert bad.exit_code == 1 and "ledger entry 3" in bad.output and "check 'hash'" in bad.output


def test_trusted_keys_must_match(run_copy, tmp_path):
    trusted = tmp_path / "trusted"
    shutil.copytree(run_copy / "keys", trusted)
    assert verify_run(run_copy, trusted).lenders == 2
    (trusted / "lender_001.pub").write_text("00" * 32 + "\n")
    with pytest.raises(VerificationFailed, match="trusted key"):
        verify_run(run_copy, trusted)


def test_runs_with_refusals_and_lender_level_dp_verify(tmp_path):
    declining = run(RunConfig(records=2000, lenders=2, rounds=4, noise_multiplier=0.8, epsilon=1.5, engine="inprocess",
                              output_dir=str(tmp_path / "declines")), on_round=lambda s: None)
    types = [e["type"] for e in _entries(declining)]
    assert L.BUDGET_REFUSAL in types
    verify_run(declining)
    lender_level = run(RunConfig(records=2000, lenders=3, rounds=2, dp_level="lender", epsilon=8.0, delta=1e-3,
                                 engine="inprocess", output_dir=str(tmp_path / "ll")), on_round=lambda s: None)
    assert "federation" in verify_run(lender_level).epsilons
    nodp = run(RunConfig(records=2000, lenders=2, rounds=1, dp=False, engine="inprocess", output_dir=str(tmp_path / "nodp")),
               on_round=lambda s: None)
    assert verify_run(nodp).epsilons == {}


def test_coordinator_refuses_an_update_that_differs_from_what_the_lender_signed(tmp_path, monkeypatch):
    import clients.app as lender_app
    from server.loop import RunFailed

    honest = lender_app.update_body

    def lying(*args, **kwargs):
        body = honest(*args, **kwargs)
        return {**body, "update_hash": "0" * 64}

    monkeypatch.setattr(lender_app, "update_body", lying)
    out = tmp_path / "run"
    with pytest.raises(RunFailed, match="differs from the one it signed"):
        run(RunConfig(records=2000, lenders=2, rounds=1, engine="inprocess", output_dir=str(out)), on_round=lambda s: None)
    assert not out.exists() and not (tmp_path / "run-keys").exists()  # nothing half-written left behind
