"""Found by a red team (second round, 2026-12-03): kill points an honest run could not come back from, and coordinator
entries that made the verifier raise instead of failing a check. Each test failed on the code it was written against
(9d96274).

"""

import copy
import json
import signal
import subprocess
import sys

import pytest

from fedcredit.runner import resume_config, run
from federation.audit_trail import ledger as L
from federation.audit_trail.verify import VerificationFailed, verify_run
from federation.config import RunConfig
from tests.forge import Forger, copy_run, entries_of

CFG = RunConfig(records=2400, lenders=3, rounds=2, epsilon=3.0, engine="inprocess")

# Patches `module`.`attr` (dotted) so that its `nth` call SIGKILLs the process: after the call for nth > 0, before it
# for nth < 0. The run is the configuration given as JSON.
_KILL_AT = """
import importlib, json, os, signal, sys
from federation.config import RunConfig
from fedcredit.runner import run
owner = importlib.import_module({module!r})
*path, name = {attr!r}.split(".")
for p in path:
    owner = getattr(owner, p)
original, calls = getattr(owner, name), [0]
def then_die(*args, **kwargs):
    calls[0] += 1
    if calls[0] == -{nth}:
        os.kill(os.getpid(), signal.SIGKILL)
    out = original(*args, **kwargs)
    if calls[0] == {nth}:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(owner, name, then_die)
cfg = RunConfig(records=2400, lenders=3, rounds=3, engine="inprocess", output_dir=sys.argv[1])
run(cfg.replace(**json.loads(sys.argv[2])), on_round=lambda s: None)
"""


def _killed(target, module, attr, nth, **extra):
    script = _KILL_AT.format(module=module, attr=attr, nth=nth)
    child = subprocess.run([sys.executable, "-c", script, str(target), json.dumps(extra)], timeout=600, check=False)
    assert child.returncode == -signal.SIGKILL, "the run was not killed where the test meant"
    return target


def _resumed_and_verified(target):
    resumed = run(resume_config(target), on_round=lambda s: None, resume=True)
    return resumed, verify_run(resumed, f"{resumed}-registry.json")


# ---- 1. a kill while the run folder is written: the honest run can never be finished -----------------------------


@pytest.mark.parametrize(
    "module,attr,nth",
    [
        ("server.ledger_keeper", "LedgerKeeper.finished", 1),  # run_finished written, no report yet
        ("server.run_outputs", "write_report", 1),  # report written, checkpoint not yet removed
        ("federation.runfolder", "RunFolder.commit", -1),  # everything written and the checkpoint removed
    ],
    ids=["after-run-finished", "after-report", "before-commit"],
)
def test_a_run_killed_while_writing_its_run_folder_resumes_and_verifies(tmp_path, module, attr, nth):
    """Observed: after run_finished (or the report) the resume collects the finals again and appends a second
    run_finished ("the ledger must end with exactly one run_finished"); before the commit, the checkpoint is already
    gone and the resume fails with "the run stopped before its first round ended" although the staging folder holds
    the whole, verifiable run."""
    target = _killed(tmp_path / "killed", module, attr, nth)
    resumed, verified = _resumed_and_verified(target)
    assert [e["body"]["round"] for e in entries_of(resumed) if e["type"] == L.ROUND_FINISHED] == [1, 2, 3]
    assert sum(e["type"] == L.RUN_FINISHED for e in entries_of(resumed)) == 1
    assert verified.aggregates.startswith("3 rounds' aggregates redone")


# ---- a run that stopped early, killed while collecting the finals -----------------------------------------------

# Round 1 fits every lender's budget at noise 1.0 (epsilon 1.89 / 2.68 / 2.84); round 2 fits none: all decline.
_STOPS_AT_2 = {"noise_multiplier": 1.0, "epsilon_overrides": [[0, 2.0], [1, 2.7], [2, 2.9]]}


def test_a_run_that_stopped_early_and_was_killed_collecting_the_finals_resumes_and_verifies(tmp_path):
    """Every lender declines round 2 (budget): the run stops, asks the finals and is killed after the first. The stop
    is not checkpointed, so the resume asks round 2 again. Before: the lenders, closed by their finals, declined it
    for being closed, a second refusal body of one request, and the run failed "lender 0's final statement: the
    lender counts 1 refusals in this run; the ledger holds 2". Now each refuses it again exactly as before."""
    target = _killed(tmp_path / "killed", "server.ledger_keeper", "LedgerKeeper.final", 1, **_STOPS_AT_2)
    resumed, _ = _resumed_and_verified(target)
    finish = entries_of(resumed)[-1]["body"]
    assert finish["rounds_completed"] == 1 and finish["stop"] == {"kind": "refused", "round": 2}


# ---- a kill in round 1 -----------------------------------------------------------------------------------------


def test_a_run_killed_in_its_first_round_can_be_resumed(tmp_path):
    """Killed after lender 0's round-1 update was signed into the ledger (the lender has spent budget on it). Before:
    CheckpointError "the run stopped before its first round ended", and the run could never be finished, although
    where it stood is fully known (the initial model from the seed, random.seed(cfg.seed))."""
    target = _killed(tmp_path / "killed", "server.ledger_keeper", "LedgerKeeper.reply", 1)
    resumed, verified = _resumed_and_verified(target)
    assert [e["body"]["round"] for e in entries_of(resumed) if e["type"] == L.ROUND_FINISHED] == [1, 2, 3]
    assert verified.aggregates.startswith("3 rounds' aggregates redone")


def test_a_run_killed_before_every_manifest_was_in_the_ledger_says_to_start_again(tmp_path):
    """Nobody has trained yet, so nothing is lost by starting again; the resume says so in one line."""
    from federation.audit_trail.checkpoint import CheckpointError

    target = _killed(tmp_path / "killed", "server.ledger_keeper", "LedgerKeeper.manifest", 1)
    with pytest.raises(
        CheckpointError, match=r"\(1 of 3\), when nobody had trained yet: remove .* and start the run again"
    ):
        run(resume_config(target), on_round=lambda s: None, resume=True)


# ---- 4. crafted coordinator entries crash the verifier ----------------------------------------------------------


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    return run(CFG.replace(output_dir=str(tmp_path_factory.mktemp("rt2") / "run")), on_round=lambda s: None)


def _evaluation_failure_of(lender):
    def change(entries):
        at = next(i for i, e in enumerate(entries) if e["type"] == L.ROUND_FINISHED)
        entries.insert(
            at,
            {
                **copy.deepcopy(entries[at]),
                "type": L.UPDATE_REJECTED,
                "body": {"round": 1, "lender": lender, "reason": "x", "stage": "evaluate"},
            },
        )

    return change


def _roster(value):
    def change(entries):
        next(e for e in entries if e["type"] == L.ROUND_STARTED)["body"]["roster"] = value

    return change


def _round_as(value):
    """The first round's round_started names round True (True == 1 passed as round 1)."""

    def change(entries):
        next(e for e in entries if e["type"] == L.ROUND_STARTED)["body"]["round"] = value

    return change


@pytest.mark.parametrize(
    "change",
    [
        _evaluation_failure_of([0]),
        _evaluation_failure_of("0"),
        _evaluation_failure_of(None),
        _roster(None),
        _round_as(True),
    ],
    ids=["eval-failure-list", "eval-failure-text", "eval-failure-null", "roster-null", "round-true"],
)
def test_crafted_coordinator_entries_fail_in_one_line(honest, tmp_path, change):
    """Observed: TypeError ('<' not supported between list/str/NoneType and int) at `sorted(scored)` in
    _check_attempts, and 'NoneType' object is not iterable at Attempt.roster: a traceback, not a VerificationFailed."""
    folder = copy_run(honest, tmp_path / "run")
    entries = entries_of(folder)
    change(entries)
    Forger(folder).write(entries)
    with pytest.raises(VerificationFailed):
        verify_run(folder, f"{honest}-registry.json")
