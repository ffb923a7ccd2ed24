"""The lender's worker (clients/worker.py) and its SuperNode launcher (clients/supernode.py).

Claims: a deployed lender answers every message with its own installed code, never with the ClientApp in the app
bundle the coordinator ships (the attack: a coordinator whose bundle carries a ClientApp that leaves a mark on the
lender's host; with Flower's ClientApp processes the mark appears, with the worker it does not, and the run
verifies); an exception becomes the error reply Flower's ClientApp process would send, and the worker goes on; the
Flower internals both modules lean on are what they were written against."""

from __future__ import annotations

import inspect
import shutil
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import clients.app as app
from clients import supernode, worker
from clients.home import LenderHome, init_lender
from federation.config import RunConfig
from federation.lender_policy import for_simulated_lender
from federation.messages import CONFIG, MANIFEST, run_config_record
from tests.test_data import _own_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as a task's pull sets them


def _lender(tmp_path: Path):
    cfg = _own_data(tmp_path / "data", [i % 3 == 0 for i in range(120)])
    init_lender(tmp_path / "lender", for_simulated_lender(cfg, 0))
    return LenderHome(tmp_path / "lender").folder, cfg


def _context(folder: Path, lender_id: int = 0) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config={"lender-dir": str(folder), "lender-id": lender_id},
        state=RecordDict(),
        run_config={},
    )


def _message(cfg, kind: str) -> Message:
    config = ConfigRecord({**dict(run_config_record(cfg)), "server-round": 1})
    return Message(RecordDict({CONFIG: config}), dst_node_id=7, message_type=kind)


def test_each_message_type_goes_to_its_handler():
    assert [worker.kind_of(_message(RunConfig(), k)) for k in ("train", "evaluate", "query.manifest")] == [
        "train",
        "evaluate",
        "manifest",
    ]
    assert set(app.HANDLERS) == {
        "manifest",
        "train",
        "evaluate",
        "final",
        "secagg_keys",
        "secagg_shares",
        "secagg_confirm",
        "secagg_unmask",
    }


def test_the_worker_answers_what_the_handler_answers(tmp_path):
    folder, cfg = _lender(tmp_path)
    msg = _message(cfg, "query.manifest")
    reply, status, details = worker.answer(msg, _context(folder), app.HANDLERS)
    alone = app.manifest(msg, _context(folder))
    assert (status, details) == ("completed", "")
    assert dict(reply.content[MANIFEST]) == dict(alone.content[MANIFEST])
    assert reply.content["attestation"]["signature"] == alone.content["attestation"]["signature"]


def test_an_exception_becomes_the_error_reply_flowers_clientapp_sends_and_the_worker_goes_on(tmp_path):
    folder, cfg = _lender(tmp_path)
    reply, status, details = worker.answer(_message(cfg, "query.manifest"), _context(folder, 2), app.HANDLERS)
    assert reply.has_error() and status == "failed" and details == reply.error.reason
    assert "ConfigError" in reply.error.reason and "belongs to lender 0" in reply.error.reason
    reply, status, _ = worker.answer(_message(cfg, "query.read_keys"), _context(folder), app.HANDLERS)
    assert reply.has_error() and "no 'query.read_keys' message" in reply.error.reason
    reply, status, _ = worker.answer(_message(cfg, "query.manifest"), _context(folder), app.HANDLERS)
    assert status == "completed" and reply.has_content()


def test_the_flower_internals_the_worker_and_the_launcher_rely_on_are_there():
    import flwr.supercore.constant as constants
    import flwr.supernode.start_client_internal as node

    source = inspect.getsource(node)
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source and "import time\n" in source
    assert supernode.IDLE_WAIT_S == 3.0 and constants.PULL_INITIAL_BACKOFF == 1  # the waits the two modules shorten
    capped = supernode.capped_time(0.05)
    started = time.perf_counter()
    capped.sleep(3)
    assert time.perf_counter() - started < 1.0 and capped.time is time.time and capped.monotonic is time.monotonic


def _bundle_with_a_hostile_clientapp(tmp_path: Path, mark: Path) -> Path:
    """The coordinator's app, but its ClientApp leaves a mark wherever it runs."""
    project = tmp_path / "coordinator-app"
    for name in ("clients", "server", "federation", "fedcredit", "benchmarks"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    source = project / "clients" / "app.py"
    source.write_text(source.read_text() + f"\nfrom pathlib import Path as _P\n_P({str(mark)!r}).write_text('ran')\n")
    return project


@pytest.mark.deployment
@pytest.mark.parametrize("own_worker", [True, False], ids=["worker", "flower-clientapp"])
def test_a_lender_with_its_worker_never_runs_the_clientapp_the_coordinator_ships(tmp_path, monkeypatch, own_worker):
    import server.superlink_host as host
    from fedcredit.deploy import Deployment
    from federation.audit_trail.verify import verify_run

    mark = tmp_path / "the-coordinators-clientapp-ran"
    monkeypatch.setattr(host, "PROJECT", _bundle_with_a_hostile_clientapp(tmp_path, mark))
    cfg = RunConfig(records=2000, lenders=2, rounds=1, seed=1, output_dir=str(tmp_path / "run"))
    deployment = Deployment(tmp_path / "deploy", 2, worker=own_worker)
    cfg = deployment.prepare(cfg)
    with deployment:
        folder = deployment.run(cfg, timeout=600)
    assert verify_run(folder, f"{folder}-registry.json").pinned
    if own_worker:
        assert not mark.exists()  # every message was answered by the lender's own code
        for lender in range(2):
            log = (tmp_path / "run-lenders" / f"lender_{lender:03d}" / "logs" / "worker.log").read_text()
            assert "train: completed" in log and "evaluate: completed" in log and "query.final: completed" in log
    else:
        assert mark.read_text() == "ran"  # the control: Flower's ClientApp process runs the bundle's code
