"""The in-process engine's lenders in several processes (fedcredit/lender_processes.py, `--lender-processes`).

What must hold: a run's results do not depend on how many processes its lenders work in; each lender keeps its own
state in one process for the whole run; a lender process that ends makes its lenders' replies errors (the round goes
on without them), not a hang or a wrong reply; nothing is left running when the run ends. Ctrl-C with lender
processes is tested in tests/test_interrupt.py."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from fedcredit.inprocess_grid import InProcessGrid
from fedcredit.runner import run
from federation.audit_trail.verify import verify_run
from federation.config import RunConfig
from federation.privacy.noise import SecureRandomness

# Everything a run states that does not name its folder or the time: byte for byte.
RESULT_FILES = ("metrics.csv", "epsilon.csv", "privacy.json", "model.json", "privacy_events.jsonl", "model.pt")


def _results(path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in RESULT_FILES}


def _ours() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure-aggregation"])
def test_a_run_gives_the_same_results_in_one_process_and_in_several_and_verifies(tmp_path, secure):
    cfg = RunConfig(records=3000, lenders=3, rounds=2, reproducible_noise_not_private=True, secure_aggregation=secure)
    before = _ours()
    one = run(cfg.replace(output_dir=str(tmp_path / "one")), on_round=lambda s: None)
    several = run(cfg.replace(output_dir=str(tmp_path / "several")), on_round=lambda s: None, lender_processes=2)
    assert _results(one) == _results(several)
    assert verify_run(several, f"{several}-registry.json").pinned
    assert _ours() <= before, "a lender process was left running"


def _counting_app() -> ClientApp:
    """Each lender counts the messages it was sent in its own Context state, and says which process it is in."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context) -> Message:
        seen = context.state.config_records.get("seen", ConfigRecord({"n": 0}))
        count = int(seen["n"]) + 1
        context.state["seen"] = ConfigRecord({"n": count})
        if msg.content.config_records["ask"]["fail"]:
            raise ValueError("this lender fails")
        noise = SecureRandomness().normal((8,)).tolist()  # as a lender's DP round draws it
        answer = {"pid": os.getpid(), "n": count, "lender": context.node_config["partition-id"], "noise": noise}
        return Message(RecordDict({"answer": ConfigRecord(answer)}), reply_to=msg)

    return app


def _ask(grid: InProcessGrid, nodes: list[int], fail: int | None = None) -> list[Message]:
    messages = [
        grid.create_message(RecordDict({"ask": ConfigRecord({"fail": n == fail})}), "query", n, "1") for n in nodes
    ]
    return list(grid.send_and_receive(messages))


def test_each_lender_stays_in_one_process_with_its_state_and_replies_come_back_in_order():
    with InProcessGrid(_counting_app(), 5, processes=2) as grid:
        nodes = sorted(grid.get_node_ids())
        where: dict[int, set[int]] = {}
        for time in (1, 2, 3):
            order = nodes[::-1] if time == 2 else nodes  # the replies follow the messages' order, not the processes'
            replies = _ask(grid, order, fail=nodes[1] if time == 3 else None)
            assert [r.metadata.src_node_id for r in replies] == order
            for node, reply in zip(order, replies, strict=True):
                if node == nodes[1] and time == 3:  # a lender's failure is its own error reply, in its place
                    assert reply.has_error() and "this lender fails" in reply.error.reason
                    continue
                answer = reply.content.config_records["answer"]
                assert answer["lender"] == node - 1000 and answer["n"] == time  # its own state, kept across rounds
                where.setdefault(node, set()).add(int(answer["pid"]))
        assert all(len(pids) == 1 for pids in where.values())
        pids = set().union(*where.values())
        assert len(pids) == 2 and os.getpid() not in pids


def test_lenders_in_forked_processes_never_draw_the_same_noise():
    """Fork copies the run's process, random state included: a stream made before the fork and used after it would
    give two lenders (or two processes) the same noise, which the coordinator cancels by subtracting their updates.
    Every lender's draw differs, in every process and every round, and from what the run's process draws."""
    SecureRandomness().normal((8,))  # the run's process has drawn before its lender processes start
    with InProcessGrid(_counting_app(), 4, processes=2) as grid:
        nodes = sorted(grid.get_node_ids())
        draws = [tuple(r.content.config_records["answer"]["noise"]) for _ in range(2) for r in _ask(grid, nodes)]
    draws.append(tuple(SecureRandomness().normal((8,)).tolist()))
    assert len(set(draws)) == len(draws) == 9


def test_a_lender_process_that_ends_makes_its_lenders_fail_and_the_others_go_on():
    before = _ours()
    with InProcessGrid(_counting_app(), 4, processes=2) as grid:
        nodes = sorted(grid.get_node_ids())
        first = {n: r.content.config_records["answer"]["pid"] for n, r in zip(nodes, _ask(grid, nodes), strict=True)}
        victim = first[nodes[0]]
        psutil.Process(int(victim)).kill()
        psutil.Process(int(victim)).wait(timeout=10)
        for _ in range(2):  # and in every round after
            replies = _ask(grid, nodes)
            for node, reply in zip(nodes, replies, strict=True):
                if first[node] == victim:
                    assert reply.has_error() and "process" in reply.error.reason
                else:
                    assert reply.content.config_records["answer"]["pid"] == first[node]
    assert _ours() <= before, "a lender process was left running"


def test_lender_processes_must_not_be_negative(tmp_path):
    from federation.errors import ConfigError

    with pytest.raises(ConfigError, match="lender-processes"):
        run(RunConfig(records=2000, lenders=2, rounds=1, output_dir=str(tmp_path / "r")), lender_processes=-1)
    assert not list(tmp_path.iterdir())


def test_each_lender_is_loaded_once_in_its_own_process_for_the_whole_run(tmp_path, monkeypatch):
    """Validation loads each lender in the process that keeps it: no lender is read and encoded a second time for
    its manifest or its rounds, and the run's own process loads none."""
    from federation.data import pipeline

    log = tmp_path / "loads.txt"
    load = pipeline._load_own

    def counted(key, lender, frame=None):
        with open(log, "a") as out:  # one line per load, from whichever process
            out.write(f"{os.getpid()} {lender}\n")
        return load(key, lender, frame)

    monkeypatch.setattr(pipeline, "_load_own", counted)  # before the fork: every lender process has it
    pipeline.forget_loaded()
    cfg = RunConfig(records=4000, lenders=4, rounds=2, output_dir=str(tmp_path / "run"))
    run(cfg, on_round=lambda s: None, lender_processes=2)
    loads = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(lender) for _, lender in loads) == [0, 1, 2, 3]
    pids = {int(pid) for pid, _ in loads}
    assert len(pids) == 2 and os.getpid() not in pids


def test_a_lender_refused_in_its_process_fails_the_run_as_in_one_process(tmp_path, monkeypatch):
    """The refusal is the first lender's in order (lender 1, in the second process, before lender 2 in the first),
    with the same one line, and nothing is written."""
    from federation.data import pipeline
    from federation.errors import DataError

    describe_lender = pipeline._describe_lender

    def refusing(key, lender, natural):
        if lender in (1, 2):
            raise DataError(f"lender {lender} cannot train: refused here")
        return describe_lender(key, lender, natural)

    monkeypatch.setattr(pipeline, "_describe_lender", refusing)
    cfg = RunConfig(records=4000, lenders=4, rounds=1)
    errors = []
    for processes in (1, 2):
        with pytest.raises(DataError) as caught:
            run(cfg.replace(output_dir=str(tmp_path / f"run{processes}")), lender_processes=processes)
        errors.append(str(caught.value))
    assert errors == ["lender 1 cannot train: refused here"] * 2
    assert list(tmp_path.iterdir()) == []


def test_the_objects_frozen_for_the_forks_are_unfrozen_when_the_processes_close():
    """The run's process freezes its objects out of the garbage collector's reach before forking the lender
    processes (pages shared with them stay shared, fedcredit/lender_processes.py); after the processes close,
    nothing stays frozen, so a caller's later garbage (a sweep's next run) is collected again."""
    import gc

    assert gc.get_freeze_count() == 0
    with InProcessGrid(_counting_app(), 3, processes=2) as grid:
        assert gc.get_freeze_count() > 0  # frozen while the lender processes run
        _ask(grid, sorted(grid.get_node_ids()))
    assert gc.get_freeze_count() == 0


_IMPORTS_AFTER_FORK = """
import sys
import fedcredit.lender_processes as lp
from fedcredit.runner import run
from federation.config import RunConfig

at_fork, pools = set(), []
start = lp.LenderProcesses.__init__


def recording(self, *args, **kwargs):
    at_fork.update(sys.modules)
    start(self, *args, **kwargs)
    pools.append(self)


def imported_since(lenders):  # in a lender process: at_fork is its copy of the run's set at the fork
    return sorted(set(sys.modules) - at_fork)


lp.LenderProcesses.__init__ = recording
late = []
cfg = RunConfig(records=3000, lenders=3, rounds=2, output_dir=sys.argv[1])
run(cfg, on_round=lambda s: late.extend(pools[0].call_each(imported_since)), lender_processes=2)
print(sorted(set().union(*map(set, late))))
"""


def test_lender_processes_import_nothing_of_their_own_after_the_fork(tmp_path):
    """The run's process imports what the lenders' handlers import when first called (torch's optimizer machinery,
    scikit-learn's metrics, the accountants) before it forks the lender processes, so that they share those pages
    instead of each holding its own copy of about 450 modules (fedcredit/runner.py, clients/app.py
    prepare_process). Run in a fresh interpreter: this test process has imported everything already."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS_AFTER_FORK, str(tmp_path / "run")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    imported = eval(out.stdout.strip().splitlines()[-1])  # a list of module names, printed by the script
    assert set(imported) <= {"multiprocessing.popen_fork"}, imported


def test_the_coordinators_accounting_ahead_stops_when_the_final_statements_fail(tmp_path, monkeypatch):
    """With lender processes the coordinator computes every lender's epsilon in a thread while the lenders sign their
    final statements (server/coordinator_strategy.py AheadAccounting). A run that fails there stops that thread
    before the error goes on: it went on computing for a run nobody would finish."""
    import threading

    import server.coordinator_strategy as strategy
    import server.loop as loop
    from server.errors import RunFailed

    computed, started = [], threading.Event()

    def slow(events, delta):
        computed.append(delta)
        started.set()
        threading.Event().wait(0.2)  # a lender's PRV epsilon at scale
        return {"rdp": 1.0, "prv": 1.0}

    def failing(*args, **kwargs):
        assert started.wait(10)
        raise RunFailed("a final statement does not add up")

    monkeypatch.setattr(strategy, "epsilons", slow)
    monkeypatch.setattr(loop, "collect_finals", failing)
    cfg = RunConfig(records=4000, lenders=4, rounds=1, output_dir=str(tmp_path / "run"))
    with pytest.raises(RunFailed):
        run(cfg, on_round=lambda s: None, lender_processes=2)
    assert not [t for t in threading.enumerate() if t.name == "account-ahead"]
    assert len(computed) < 4  # stopped after the lender it was on, not after all of them


def test_a_run_with_lender_processes_never_draws_the_same_noise_twice(tmp_path, monkeypatch):
    """The run's process takes a warm-up step (with secure noise) before it forks the lender processes
    (clients/app.py prepare_process). Were any keystream made there used after the fork, two lenders would draw the
    same noise, which the coordinator cancels by subtracting their updates. Every stream's first words, in every
    process of a real run, differ."""
    from federation.privacy import noise

    log = tmp_path / "draws.txt"
    uniform = noise.ChaChaStream.uniform

    def recorded(self, count):
        out = uniform(self, count)
        if not getattr(self, "_recorded", False):  # the first draw of each stream
            self._recorded = True
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {out[:4].tobytes().hex()}\n")
        return out

    monkeypatch.setattr(noise.ChaChaStream, "uniform", recorded)  # before the fork: every process has it
    cfg = RunConfig(records=4000, lenders=4, rounds=2, output_dir=str(tmp_path / "run"))
    run(cfg, on_round=lambda s: None, lender_processes=2)
    draws = [line.split() for line in log.read_text().splitlines()]
    firsts = [words for _, words in draws]
    assert len(set(firsts)) == len(firsts), "two streams gave the same noise"
    assert len({pid for pid, _ in draws} - {str(os.getpid())}) == 2  # both lender processes drew
    assert len(firsts) >= 8  # a fresh stream for each of 4 lenders in each of 2 rounds, at least
