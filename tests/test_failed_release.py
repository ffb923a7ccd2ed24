"""A lender whose training fails after it counted the release (clients/dp_round.py, `_failed_release`).

The release stays paid for: whether training fails can depend on the noisy result. What must hold: the lender
signs and sends it with nothing in it; the coordinator records it, accounts its event and leaves the lender out of
that round; the run finishes and verifies, the lender's final count agrees with the ledger, and every epsilon
(the lender's own, the report's, the verifier's) includes the failed release. Before, the lender sent an error
reply, the coordinator never saw the release, and the whole run failed at the final statements.

The attacks: a coordinator that leaves the failed release out of the ledger, or out of the lender's epsilon, or
that records the empty release as aggregated, is caught by the verifier."""

from __future__ import annotations

import json

import pytest

import clients.dp_round as dp_round
from fedcredit.runner import run
from federation.audit_trail import ledger as L
from federation.audit_trail.verify import VerificationFailed, verify_run
from federation.config import RunConfig
from federation.privacy.accountant import epsilon, epsilons
from federation.privacy.events import PrivacyEvent
from tests.forge import Forger, copy_run, entries_of, restate_privacy
from tests.lender_kit import run_account

BASE = RunConfig(records=3000, lenders=3, rounds=3, delta=1e-4, engine="inprocess")
FAILING, IN_ROUND = 1, 2


def _failing_once(monkeypatch) -> None:
    """Lender FAILING's training raises in round IN_ROUND, after the release was counted (as a DP-SGD step count
    that does not match the admitted one does, in `_train_once`)."""
    honest = dp_round._train_once

    def train(session, planned, *rest):
        if session.lender == FAILING and session.round == IN_ROUND:
            raise RuntimeError("training broke here")
        return honest(session, planned, *rest)

    monkeypatch.setattr(dp_round, "_train_once", train)


KINDS = {
    "plain": {},
    "secure-aggregation": {"secure_aggregation": True},
    "gbdt": {"model": "gbdt"},
}


@pytest.fixture(scope="module", params=list(KINDS))
def failed_run(request, tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    _failing_once(monkeypatch)
    try:
        out = tmp_path_factory.mktemp("failed") / "run"
        cfg = BASE.replace(**KINDS[request.param], output_dir=str(out))
        return run(cfg, on_round=lambda s: None)
    finally:
        monkeypatch.undo()


def test_the_run_finishes_and_verifies_with_the_failed_release_accounted(failed_run):
    assert verify_run(failed_run, f"{failed_run}-registry.json").pinned
    entries = entries_of(failed_run)
    mine = [e["body"] for e in entries if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == FAILING]
    assert [b["release"] for b in mine] == [1, 2, 3]
    failed = next(b for b in mine if b["round"] == IN_ROUND)
    assert failed["shapes"] == {} and failed["bytes_sent"] == 0  # nothing left the lender
    assert len(failed["events"]) == 1
    (rejection,) = [
        e["body"]
        for e in entries
        if e["type"] == L.UPDATE_REJECTED and e["body"]["lender"] == FAILING and e["body"]["round"] == IN_ROUND
    ]
    assert "failed after" in rejection["reason"]
    aggregated = [e["body"] for e in entries if e["type"] == L.AGGREGATE and e["body"]["round"] == IN_ROUND]
    assert FAILING not in aggregated[0]["lenders"]
    account = run_account(failed_run, FAILING)
    assert account["releases"] == 3 and len(account["events"]) == 3


def test_every_epsilon_counts_the_failed_release(failed_run):
    events = [
        PrivacyEvent.from_dict(json.loads(line))
        for line in (failed_run / "privacy_events.jsonl").read_text().splitlines()
    ]
    mine = [e for e in events if e.lender == FAILING]
    assert sorted(e.round for e in mine) == [1, 2, 3]
    unit = json.loads((failed_run / "privacy.json").read_text())["units"][str(FAILING)]
    assert unit["epsilon"] == pytest.approx(epsilon(mine, unit["delta"]), rel=1e-9)
    assert unit["epsilon"] > epsilon([e for e in mine if e.round != IN_ROUND], unit["delta"])
    (final,) = [
        e["body"] for e in entries_of(failed_run) if e["type"] == L.LENDER_FINAL and e["body"]["lender"] == FAILING
    ]
    assert final["releases"] == 3


@pytest.fixture
def folder(failed_run, tmp_path):
    """A copy of the run (its folder, keys, lenders' folders and registry) for a coordinator to rewrite."""
    return copy_run(failed_run, tmp_path / "run")


def _is_the_failed_release(entry) -> bool:
    body = entry["body"]
    return (
        entry["type"] in (L.LENDER_UPDATE, L.UPDATE_REJECTED)
        and body.get("lender") == FAILING
        and body.get("round") == IN_ROUND
    )


def _caught(folder, check, contains):
    with pytest.raises(VerificationFailed) as info:
        verify_run(folder, f"{folder}-registry.json")
    assert info.value.check == check and contains in str(info.value), str(info.value)


def test_a_coordinator_that_leaves_the_failed_release_out_of_the_ledger_is_caught(folder):
    """The signed empty release and its rejection dropped, the rest renumbered, re-chained, re-derived and the
    report restated: the lender is then missing from the round it was rostered in; left out of the roster too, the
    round asked fewer lenders than the configuration does (and the lender's own numbering skips release 2)."""
    entries = [e for e in entries_of(folder) if not _is_the_failed_release(e)]
    Forger(folder).write(restate_privacy(entries))
    _caught(folder, "roster", f"lender {FAILING} was asked in round {IN_ROUND}")
    # and out of the roster too: the lender's own count and numbering stand in the way
    entries = [json.loads(json.dumps(e)) for e in entries]
    for entry in entries:
        if entry["type"] == L.ROUND_STARTED and entry["body"]["round"] == IN_ROUND:
            entry["body"]["roster"] = [x for x in entry["body"]["roster"] if x != FAILING]
    Forger(folder).write(restate_privacy(entries))
    with pytest.raises(VerificationFailed):
        verify_run(folder, f"{folder}-registry.json")


def test_a_coordinator_that_calls_the_failed_release_a_dropout_is_caught(folder):
    """The empty release dropped, its rejection kept (a lender that sent nothing, as before this fix): the lender's
    releases skip a number and its own final statement says so."""
    entries = [e for e in entries_of(folder) if not (_is_the_failed_release(e) and e["type"] == L.LENDER_UPDATE)]
    Forger(folder).write(restate_privacy(entries))
    _caught(folder, "completeness", f"lender {FAILING}")


def test_an_empty_update_recorded_as_accepted_is_caught(folder):
    """The rejection of the empty release dropped, so that the update looks usable (and could be named in the
    aggregate)."""
    entries = [e for e in entries_of(folder) if not (_is_the_failed_release(e) and e["type"] == L.UPDATE_REJECTED)]
    Forger(folder).write(entries)
    _caught(folder, "roster", "holds nothing")


def test_a_report_that_leaves_the_failed_release_out_of_the_epsilon_is_caught(folder):
    """The ledger kept, the coordinator's own privacy statement for the lender computed without the failed
    release's event."""
    entries = entries_of(folder)
    unit = entries[-1]["body"]["privacy"]["units"][str(FAILING)]
    events = [
        PrivacyEvent.from_dict(json.loads(line)) for line in (folder / "privacy_events.jsonl").read_text().splitlines()
    ]
    fewer = [e for e in events if e.lender == FAILING and e.round != IN_ROUND]
    both = epsilons(fewer, unit["delta"])
    unit.update({"epsilon": both["rdp"], "epsilon_rdp": both["rdp"], "epsilon_prv": both["prv"]})
    Forger(folder).write(entries)
    with pytest.raises(VerificationFailed):
        verify_run(folder, f"{folder}-registry.json")


_KILLED_BETWEEN_THE_TWO_WRITES = """
import os, signal, sys
import clients.dp_round as dp_round
from federation.audit_trail import ledger as L
from federation.config import RunConfig
from fedcredit.runner import run

honest = dp_round._train_once


def train(session, planned, *rest):
    if session.lender == 1 and session.round == 2:
        raise RuntimeError("training broke here")
    return honest(session, planned, *rest)


dp_round._train_once = train
append_lender = L.Ledger.append_lender


def append_then_die(self, kind, lender, body, signature):
    entry = append_lender(self, kind, lender, body, signature)
    if kind == L.LENDER_UPDATE and body.get("shapes") == {}:
        os.kill(os.getpid(), signal.SIGKILL)  # the coordinator dies between the empty update and its rejection
    return entry


L.Ledger.append_lender = append_then_die
cfg = RunConfig(records=3000, lenders=3, rounds=3, delta=1e-4, engine="inprocess", output_dir=sys.argv[1])
run(cfg, on_round=lambda s: None)
"""


def test_a_run_resumed_after_a_kill_between_the_empty_update_and_its_rejection_verifies(tmp_path):
    """The red team's case: the coordinator killed right after it recorded the empty release, before its rejection,
    then resumed. The unfinished attempt holds an empty update with no rejection; it aggregated nothing, so the
    verifier's rule (an empty update is recorded as rejected) is for finished rounds only."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from fedcredit.runner import resume_config

    target = tmp_path / "killed"
    root = str(Path(__file__).resolve().parents[1])
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_BETWEEN_THE_TWO_WRITES, str(target)],
        timeout=300,
        check=False,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    resumed = run(resume_config(target), on_round=lambda s: None, resume=True)
    assert verify_run(resumed, f"{resumed}-registry.json").pinned
