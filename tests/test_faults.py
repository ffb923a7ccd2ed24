"""Faults: lenders that fail, poisoned or broken updates, robust aggregation, a coordinator killed mid-round."""

import json
import os
import stat
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord

import clients.dp_round as dp_round
from fedcredit.runner import run
from federation.audit_trail import ledger as L
from federation.audit_trail.verify import verify_run
from federation.config import RunConfig
from tests.forge import entries_of
from tests.lender_kit import run_account

# An explicit delta: lender 4 of this market has 46 training records, too few for the default delta.
BASE = RunConfig(records=4000, lenders=5, rounds=4, delta=1e-4, engine="inprocess")


def _verified(folder):
    """The run verifies against the registry its parties published (every key pinned)."""
    result = verify_run(folder, f"{folder}-registry.json")
    assert result.pinned
    return result


def _corrupt(monkeypatch, lender: int, how):
    """Make one lender train and release normally, then send a broken model: it wraps the lender's own training
    (clients.dp_round._train_once), so the release is counted and signed by the lender as usual."""
    honest = dp_round._train_once
    calls = Counter()

    def train_then_corrupt(session, planned):
        arrays = honest(session, planned)
        if session.lender != lender:
            return arrays
        calls[session.round] += 1
        state = arrays.to_torch_state_dict()
        with torch.no_grad():
            for value in state.values():
                how(value)
        return ArrayRecord(state)

    monkeypatch.setattr(dp_round, "_train_once", train_then_corrupt)
    return calls


def test_thirty_percent_dropouts_complete_and_count_only_rounds_trained(tmp_path):
    folder = run(
        BASE.replace(lenders=6, rounds=5, fail_rate=0.3, output_dir=str(tmp_path / "drop")), on_round=lambda s: None
    )
    entries = entries_of(folder)
    failed = [(e["body"]["round"], e["body"]["lender"]) for e in entries if e["type"] == L.UPDATE_REJECTED]
    assert 3 <= len(failed) <= 18  # 30% of 30 lender-rounds, give or take
    assert all("injected failure" in e["body"]["reason"] for e in entries if e["type"] == L.UPDATE_REJECTED)
    events = [json.loads(x) for x in (folder / "privacy_events.jsonl").read_text().splitlines()]
    trained = Counter(e["lender"] for e in events)
    for lender in range(6):
        assert trained[lender] == 5 - sum(1 for _, who in failed if who == lender)
        assert run_account(folder, lender)["releases"] == trained[lender]  # the lender's own count agrees
    for agg in (e for e in entries if e["type"] == L.AGGREGATE):
        assert not set(agg["body"]["lenders"]) & {who for rnd, who in failed if rnd == agg["body"]["round"]}
    _verified(folder)


def test_a_scaled_update_is_rejected_but_its_release_is_still_accounted(tmp_path, monkeypatch):
    calls = _corrupt(monkeypatch, 0, lambda p: p.mul_(1e6))
    folder = run(BASE.replace(output_dir=str(tmp_path / "scaled")), on_round=lambda s: None)
    assert calls == {1: 1, 2: 1, 3: 1, 4: 1}  # lender 0 trained once a round, then broke its model
    rejected = [e["body"] for e in entries_of(folder) if e["type"] == L.UPDATE_REJECTED]
    assert {r["lender"] for r in rejected} == {0} and len(rejected) == 4
    assert all("exceeds max-update-norm" in r["reason"] for r in rejected)
    events = [json.loads(x) for x in (folder / "privacy_events.jsonl").read_text().splitlines()]
    assert sum(e["lender"] == 0 for e in events) == 4  # lender 0 trained (and spent budget) every round
    # its signed updates are in the ledger, numbered 1..4 by the lender itself
    signed = [e["body"] for e in entries_of(folder) if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 0]
    assert [b["release"] for b in signed] == [1, 2, 3, 4]
    assert run_account(folder, 0)["releases"] == 4
    assert all(0 not in e["body"]["lenders"] for e in entries_of(folder) if e["type"] == L.AGGREGATE)
    privacy = json.loads((folder / "privacy.json").read_text())["units"]
    assert privacy["0"]["rounds_released"] == 4 and privacy["0"]["epsilon"] > 0
    _verified(folder)


def test_a_nan_update_is_rejected_before_aggregation(tmp_path, monkeypatch):
    calls = _corrupt(monkeypatch, 2, lambda p: p.fill_(float("nan")))
    folder = run(BASE.replace(rounds=2, output_dir=str(tmp_path / "nan")), on_round=lambda s: None)
    assert calls == {1: 1, 2: 1}
    rejected = [e["body"] for e in entries_of(folder) if e["type"] == L.UPDATE_REJECTED]
    assert {r["lender"] for r in rejected} == {2} and len(rejected) == 2 and all("NaN" in r["reason"] for r in rejected)
    assert all(2 not in e["body"]["lenders"] for e in entries_of(folder) if e["type"] == L.AGGREGATE)
    state = torch.load(folder / "model.pt")
    assert all(torch.isfinite(v).all() for v in state.values())
    assert run_account(folder, 2)["releases"] == 2  # it released (and spent) although its update was unusable
    _verified(folder)


def _final_auc(folder):
    metrics = pd.read_csv(folder / "metrics.csv")
    return float(metrics[metrics.scope == "global"].auc.iloc[-1])


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg"])
def test_robust_aggregation_survives_a_lender_scaling_its_updates_by_1e6(tmp_path, monkeypatch, strategy):
    robust = BASE.replace(dp=False, strategy=strategy, max_update_norm=0.0)
    clean = run(robust.replace(output_dir=str(tmp_path / "clean")), on_round=lambda s: None)
    calls = _corrupt(monkeypatch, 1, lambda p: p.mul_(1e6))
    attacked = run(robust.replace(output_dir=str(tmp_path / strategy)), on_round=lambda s: None)
    assert sum(calls.values()) == BASE.rounds
    assert not [e for e in entries_of(attacked) if e["type"] == L.UPDATE_REJECTED]  # no norm bound: robustness alone
    assert abs(_final_auc(attacked) - _final_auc(clean)) <= 0.01
    monkeypatch.undo()
    _corrupt(monkeypatch, 1, lambda p: p.mul_(1e6))
    plain = run(
        BASE.replace(dp=False, max_update_norm=0.0, output_dir=str(tmp_path / "fedavg-attacked")),
        on_round=lambda s: None,
    )
    state = torch.load(plain / "model.pt")
    assert max(float(v.abs().max()) for v in state.values()) > 1e3  # FedAvg alone is wrecked
    assert np.isfinite(_final_auc(attacked))
    _verified(attacked)


KILL_SCRIPT = """
import os, signal, sys
from federation.audit_trail import ledger as L
from federation.config import RunConfig
from fedcredit.runner import run

# kill -9 at a fixed point, whatever the machine's speed: right after the ledger has recorded the first
# round-3 lender update, i.e. mid-round, after the round-2 checkpoint and before the round-3 aggregate.
append_lender = L.Ledger.append_lender
def append_then_die(self, kind, lender, body, signature):
    entry = append_lender(self, kind, lender, body, signature)
    if kind == L.LENDER_UPDATE and body.get("round") == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return entry
L.Ledger.append_lender = append_then_die
run(RunConfig(records=12000, lenders=4, rounds=5, engine="inprocess", output_dir=sys.argv[1]), on_round=lambda s: None)
"""


def _modes(folder):
    return {str(p.relative_to(folder)): stat.S_IMODE(os.stat(p).st_mode) for p in [folder, *folder.rglob("*")]}


def test_kill_9_mid_round_then_resume_gives_the_uninterrupted_epsilons(tmp_path):
    import signal
    import subprocess
    import sys

    from fedcredit.runner import resume_config

    target = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(target)], timeout=600, check=False)
    assert child.returncode == -signal.SIGKILL, "the run was not killed mid-round"
    assert not target.exists()
    cfg = resume_config(target)
    assert not cfg.reproducible_noise_not_private  # CSPRNG noise: a retrained round 3 could not repeat its hash
    resumed = run(cfg, on_round=lambda s: None, resume=True)
    entries = entries_of(resumed)
    kinds = [e["type"] for e in entries]
    assert kinds.count(L.RUN_RESUMED) == 1
    at = kinds.index(L.RUN_RESUMED)
    round3 = [
        (i < at, e["body"]) for i, e in enumerate(entries) if e["type"] == L.LENDER_UPDATE and e["body"]["round"] == 3
    ]
    before = {body["lender"]: body["update_hash"] for was_before, body in round3 if was_before}
    after = {body["lender"]: body["update_hash"] for was_before, body in round3 if not was_before}
    assert len(before) == 1 and sorted(after) == [0, 1, 2, 3]  # one update recorded before the kill, all four after
    for lender, digest in before.items():
        assert after[lender] == digest  # the lender resent the reply it saved: it did not train round 3 again
    for lender in range(4):
        mine = [b for b in (e["body"] for e in entries if e["type"] == L.LENDER_UPDATE) if b["lender"] == lender]
        assert sorted({b["release"] for b in mine}) == [1, 2, 3, 4, 5]  # a resend is the same release, not a new one
        assert run_account(resumed, lender)["releases"] == 5  # and the lender itself counted five
    _verified(resumed)
    whole = run(cfg.replace(output_dir=str(tmp_path / "whole")), on_round=lambda s: None)
    mine, theirs = (json.loads((f / "privacy.json").read_text())["units"] for f in (resumed, whole))
    for lender in ("0", "1", "2", "3"):
        assert mine[lender]["epsilon"] == pytest.approx(theirs[lender]["epsilon"], rel=1e-12)
        assert mine[lender]["rounds_released"] == theirs[lender]["rounds_released"] == 5
    metrics = pd.read_csv(resumed / "metrics.csv")
    assert sorted(metrics["round"].unique()) == [1, 2, 3, 4, 5]
    assert not list(tmp_path.glob(".killed.partial-*")) and not (resumed / "checkpoint.enc").exists()
    assert stat.S_IMODE(os.stat(tmp_path / "killed-keys" / "checkpoint.aesgcm").st_mode) == 0o600
    # Each lender's secrets and privacy state: folders 0700, files 0600 (the empty lock file aside).
    for lender_dir in sorted((tmp_path / "killed-lenders").iterdir()):
        assert stat.S_IMODE(os.stat(lender_dir).st_mode) == 0o700
        modes = _modes(lender_dir / "state")
        assert "spent.json" in modes and any(name.startswith("sent/") and name.endswith(".json") for name in modes)
        for name, mode in modes.items():
            if (lender_dir / "state" / name).is_dir():
                assert mode == 0o700, (lender_dir, name)
            elif name != ".lock":
                assert mode == 0o600, (lender_dir, name)
        for key in ("identity.key", "commitment.key"):
            assert stat.S_IMODE(os.stat(lender_dir / key).st_mode) == 0o600


def test_resume_refuses_a_finished_run_and_a_missing_one(tmp_path):
    from fedcredit.runner import resume_config
    from federation.errors import ConfigError

    with pytest.raises(ConfigError, match="no unfinished run"):
        resume_config(tmp_path / "never")
    (tmp_path / "done").mkdir()  # a finished run, even beside a staging folder left by another attempt
    (tmp_path / ".done.partial-1").mkdir()
    with pytest.raises(ConfigError, match="no unfinished run"):
        resume_config(tmp_path / "done")
