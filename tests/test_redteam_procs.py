"""Red team on the in-process engine's lender processes (fedcredit/lender_processes.py, `--lender-processes N`).

Each test is an attack that succeeded, with its fix, or one that failed but would catch a regression cheaply:
- an error in one lender process left the other processes' answers unread in their pipes, and the next round's
  replies were answers to the earlier call (another question's, for the lenders of those processes);
- an exception that cannot cross the pipe (a class pickle cannot name, or one it cannot rebuild) killed the lender
  process with a traceback on the terminal, or left the run with an unpickling error instead of the lender's;
- SIGTERM (a job scheduler, `timeout`) killed `fedcredit run` outright, leaving its keys, its lenders' folders and
  registry behind; sent to the process group, it also reached the lender processes;
- a secure-aggregation round whose setup failed (too few lenders advertised keys: a lender process that ended, for
  one) left the lenders that did answer without any outcome in the ledger, and the honest run failed verification.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from flwr.app import Error, Message

import fedcredit.inprocess_grid as inprocess_grid
from fedcredit.inprocess_grid import InProcessGrid
from fedcredit.runner import run
from federation.audit_trail.verify import verify_run
from federation.config import RunConfig
from federation.errors import DataError
from tests.test_interrupt import kill_all
from tests.test_lender_processes import _ask, _counting_app, _ours

ROOT = Path(__file__).resolve().parents[1]


def _fails_in_lender_0(lenders: list[int]) -> list[int]:
    """A call that fails in the process that holds lender 0 and answers in the others."""
    if 0 in lenders:
        raise ValueError("the process of lender 0 fails")
    return lenders


def test_an_error_in_one_lender_process_leaves_no_answer_behind_for_the_next_round():
    with InProcessGrid(_counting_app(), 4, processes=2) as grid:
        assert grid._processes is not None
        with pytest.raises(ValueError, match="lender 0 fails"):
            grid._processes.call_each(_fails_in_lender_0)
        nodes = sorted(grid.get_node_ids())
        replies = _ask(grid, nodes)  # before the fix: lenders-1's answer to the call came back as their replies
        assert [r.metadata.src_node_id for r in replies] == nodes
        assert [r.content.config_records["answer"]["lender"] for r in replies] == [0, 1, 2, 3]


class _NeedsTwo(Exception):
    """Pickles, but cannot be rebuilt from its args (pickle calls _NeedsTwo(message))."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _raises_local_class(lenders: list[int]) -> None:
    class Nameless(DataError):  # pickle cannot name a class defined in a function
        pass

    raise Nameless(f"lenders {lenders} cannot be read")


def _raises_needs_two(lenders: list[int]) -> None:
    raise _NeedsTwo(f"lenders {lenders} are odd", 7)


@pytest.mark.parametrize("call", [_raises_local_class, _raises_needs_two], ids=["not-pickled", "not-unpickled"])
def test_an_error_that_cannot_cross_the_pipe_is_still_the_lenders_and_the_process_lives_on(call, capfd):
    with pytest.raises(TypeError):  # the premise: it does not survive a round trip
        pickle.loads(pickle.dumps(_NeedsTwo("x", 1)))
    with InProcessGrid(_counting_app(), 2, processes=2) as grid:
        assert grid._processes is not None
        pids = set(_ours())
        # the nearest class that crosses, with the same message: a DataError stays one (one line at the CLI)
        with pytest.raises(DataError if call is _raises_local_class else Exception, match=r"lenders \[0\]") as caught:
            grid._processes.call_each(call)
        assert not isinstance(caught.value, pickle.UnpicklingError | TypeError)
        replies = _ask(grid, sorted(grid.get_node_ids()))
        assert all(not r.has_error() for r in replies), [r.error.reason for r in replies if r.has_error()]
        assert _ours() == pids, "a lender process ended"
    assert "Traceback" not in capfd.readouterr().err


def test_a_lender_refused_with_an_error_pickle_cannot_name_fails_the_run_as_in_one_process(
    tmp_path, monkeypatch, capfd
):
    from federation.data import pipeline

    describe_lender = pipeline._describe_lender

    class Nameless(DataError):
        pass

    def refusing(key, lender, natural):
        if lender == 1:
            raise Nameless(f"lender {lender} cannot train: refused here")
        return describe_lender(key, lender, natural)

    monkeypatch.setattr(pipeline, "_describe_lender", refusing)
    before = _ours()
    cfg = RunConfig(records=3000, lenders=3, rounds=1)
    for processes in (1, 2):
        with pytest.raises(DataError, match=r"^lender 1 cannot train: refused here$"):
            run(cfg.replace(output_dir=str(tmp_path / f"run{processes}")), lender_processes=processes)
    assert list(tmp_path.iterdir()) == []
    assert _ours() <= before
    assert "Traceback" not in capfd.readouterr().err


def _sigterm(tmp_path: Path, group: bool) -> tuple[int, str, list[str], list[psutil.Process]]:
    """`fedcredit run --lender-processes 2` sent SIGTERM once its first round is done: its exit code, output, what
    it left in tmp_path and the processes it had started."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    command = [sys.executable, "-m", "fedcredit", "run", "--lender-processes", "2", "--records", "3000"]
    command += ["--lenders", "2", "--rounds", "200", "--output-dir", str(out)]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    started: list[psutil.Process] = []
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))
            if line.startswith("round 1:"):
                break
        started = psutil.Process(proc.pid).children(recursive=True)
        (os.killpg if group else os.kill)(proc.pid, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        time.sleep(0.5)  # the lender processes see their pipe close
        return proc.returncode, "\n".join(seen + rest.splitlines()), sorted(p.name for p in tmp_path.iterdir()), started
    finally:
        kill_all(proc, started)


@pytest.mark.parametrize("group", [True, False], ids=["group", "pid"])
def test_sigterm_stops_a_run_with_lender_processes_like_ctrl_c(tmp_path, group):
    code, output, left, started = _sigterm(tmp_path, group)
    assert len(started) == 2
    assert code == 130, output
    assert "Traceback" not in output, output
    assert output.splitlines()[-1] == "interrupted: nothing was written", output
    assert left == [], "left behind"
    running = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not running, f"left running: {running}"


def test_a_secure_round_whose_setup_fails_records_every_lender_asked_and_the_run_verifies(tmp_path, monkeypatch):
    """Two of four lenders give no keys in round 2 (as when their lender process ended): the round cannot mask and
    the model stays; the two that answered must have an outcome in the ledger, or the verifier rejects the run."""
    deliver = inprocess_grid.deliver

    def keys_lost(client_app, context, wire):
        msg = inprocess_grid.from_wire(wire)
        if (
            msg.metadata.message_type == "query.secagg_keys"
            and context.node_id in (1000, 1002)
            and int(msg.content.config_records["config"]["server-round"]) == 2
        ):
            return inprocess_grid.to_wire(Message(Error(code=0, reason="its process ended"), reply_to=msg))
        return deliver(client_app, context, wire)

    monkeypatch.setattr(inprocess_grid, "deliver", keys_lost)
    cfg = RunConfig(records=4000, lenders=4, rounds=3, secure_aggregation=True, output_dir=str(tmp_path / "run"))
    folder = run(cfg, on_round=lambda s: None)
    assert verify_run(folder, f"{folder}-registry.json").pinned
    bodies = [json.loads(line)["body"] for line in (folder / "ledger.jsonl").read_text().splitlines()]
    left_out = {b["lender"]: b["reason"] for b in bodies if b.get("round") == 2 and "reason" in b and "lender" in b}
    assert sorted(left_out) == [0, 1, 2, 3]
    assert "did not start" in left_out[1] and "did not start" in left_out[3]


def test_a_lender_process_killed_in_a_secure_run_leaves_a_run_that_says_so(tmp_path):
    """The attack of the brief end to end: a lender process killed after round 1 of a secure run. Its lenders fail
    every round after and send no final statement; the others go on. The run finishes (no hang) and the verifier
    names the lender that cannot be shown complete, not a broken ledger."""
    from federation.audit_trail.verify import VerificationFailed

    killed: list[int] = []

    def kill_one(summary) -> None:
        kids = sorted(p.pid for p in psutil.Process().children())
        if not killed and len(kids) == 2:
            killed.append(kids[0])
            psutil.Process(kids[0]).kill()
            psutil.Process(kids[0]).wait(timeout=10)

    cfg = RunConfig(records=4000, lenders=4, rounds=2, secure_aggregation=True, output_dir=str(tmp_path / "run"))
    folder = run(cfg, on_round=kill_one, lender_processes=2)
    assert killed
    with pytest.raises(VerificationFailed, match="lender 0 signed no final statement"):
        verify_run(folder, f"{folder}-registry.json")


def test_replies_for_the_same_lender_never_come_from_two_processes_after_a_process_ends():
    """A process that ended is never replaced by another serving its lenders (which would hold none of their
    Context): its lenders' replies stay errors, the others' keep their own counts."""
    with InProcessGrid(_counting_app(), 4, processes=2) as grid:
        nodes = sorted(grid.get_node_ids())
        first = {n: r.content.config_records["answer"]["pid"] for n, r in zip(nodes, _ask(grid, nodes), strict=True)}
        psutil.Process(int(first[nodes[1]])).kill()
        psutil.Process(int(first[nodes[1]])).wait(timeout=10)
        replies = _ask(grid, nodes)
    for node, reply in zip(nodes, replies, strict=True):
        if first[node] == first[nodes[1]]:
            assert reply.has_error()
        else:
            answer = reply.content.config_records["answer"]
            assert answer["pid"] == first[node] and answer["n"] == 2


def test_the_run_process_holds_no_lenders_context_state_after_a_run_with_lender_processes():
    """The Contexts the run's process made for its lender processes stay empty: each lender's state is only in its
    own process."""
    with InProcessGrid(_counting_app(), 3, processes=2) as grid:
        _ask(grid, sorted(grid.get_node_ids()))
        assert grid._contexts and all(not ctx.state.config_records for ctx in grid._contexts.values())


def test_lenders_in_forked_processes_never_advertise_the_same_secure_aggregation_keys(tmp_path, monkeypatch):
    """Fork copies OpenSSL's state with the rest: keys made from a generator state copied into two processes would
    be the same, and the coordinator, holding one lender's shares of it, would strip another's masks. Every
    lender's mask and channel keys differ, in every process and round (the run's process made keys before)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from server.secure_rounds import SecureRound

    X25519PrivateKey.generate()  # the run's process has drawn from OpenSSL before its lender processes start
    seen: list[bytes] = []
    keys_verify = SecureRound._keys_verify

    def collecting(self, p, reply):  # every key a lender advertises passes here
        seen.extend((bytes(reply["mask-key"]), bytes(reply["channel-key"])))
        return keys_verify(self, p, reply)

    monkeypatch.setattr(SecureRound, "_keys_verify", collecting)
    cfg = RunConfig(records=3000, lenders=4, rounds=2, secure_aggregation=True, output_dir=str(tmp_path / "run"))
    run(cfg, on_round=lambda s: None, lender_processes=2)
    assert len(seen) == 16 and len(set(seen)) == 16


def test_an_error_in_the_server_app_with_lender_processes_leaves_nothing_running_and_nothing_written(
    tmp_path, monkeypatch
):
    import server.loop

    def failing(*args, **kwargs):
        raise RuntimeError("the report writer fails")

    monkeypatch.setattr(server.loop, "write_outputs", failing)
    before = _ours()
    cfg = RunConfig(records=3000, lenders=3, rounds=1, output_dir=str(tmp_path / "run"))
    with pytest.raises(RuntimeError, match="the report writer fails"):
        run(cfg, on_round=lambda s: None, lender_processes=2)
    assert list(tmp_path.iterdir()) == []
    assert _ours() <= before, "a lender process was left running"


@pytest.mark.parametrize("partition", ["iid", "natural"])
def test_the_run_process_keeps_no_lenders_records_after_validating_with_lender_processes(tmp_path, partition):
    """Validation reads the whole market in the run's process (the pooled holdout's count): with lender processes,
    the lenders' records are theirs only, so none stays in the coordinator's caches for the run."""
    from federation.data import pipeline

    held: list[tuple[int, int]] = []
    cfg = RunConfig(records=3000, lenders=3, rounds=1, partition=partition, output_dir=str(tmp_path / "run"))

    def look(summary) -> None:  # during the run, in the run's process
        held.append((pipeline._raw.cache_info().currsize, sum(len(v) for v in pipeline._LOADED.values())))

    pipeline.forget_loaded()
    run(cfg, on_round=look, lender_processes=2)
    assert held == [(0, 0)]


@pytest.mark.parametrize(
    "options",
    [
        dict(
            model="mlp", hidden=8, strategy="fedprox", lenders_per_round=3, fail_rate=0.3, epsilon_overrides=((1, 1.0),)
        ),
        dict(model="gbdt", secure_aggregation=True),
        dict(dp_level="lender", lender_sample_rate=0.7, delta=0.005),
    ],
    ids=["mlp-fedprox-sampled-failing", "gbdt-secure", "lender-level-dp"],
)
def test_other_models_strategies_and_options_give_the_same_results_with_lender_processes(tmp_path, options):
    """The attack on 'results do not depend on N' beyond the plain and secure logreg runs: none of these changed a
    byte (each lender's draws depend on its id and round only, sampling and failures are drawn by the coordinator
    or from the lender's own seed), and both runs verify."""
    from tests.test_lender_processes import _results

    cfg = RunConfig(records=2000, lenders=4, rounds=2, reproducible_noise_not_private=True, **options)
    one = run(cfg.replace(output_dir=str(tmp_path / "one")), on_round=lambda s: None)
    three = run(cfg.replace(output_dir=str(tmp_path / "three")), on_round=lambda s: None, lender_processes=3)
    assert _results(one) == _results(three)
    assert verify_run(three, f"{three}-registry.json").pinned
