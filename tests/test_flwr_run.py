"""`flwr run .` as a user runs it: a federation with fewer SuperNodes than lenders fails at once in one line,
Flower's lines appear once, and a finished run prints the table and paths `fedcredit run` prints."""

import contextlib
import json
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import psutil
import pytest
from flwr.app import Context, RecordDict
from flwr.superlink.grid import InMemoryGrid

from federation.errors import FedCreditError
from federation.flower_logs import OneLineErrors, reported
from federation.processes import free_port
from federation.run_summary import read_summary
from server.enrolment import wait_for_nodes
from server.errors import RunFailed

ROOT = Path(__file__).resolve().parents[1]
FLWR = str(Path(sys.executable).parent / "flwr")


def _flower_log(error: BaseException) -> str:
    """What Flower's runtime logs for a ServerApp that raised `error` (flwr 1.42: log(ERROR, ..., exc_info=ex)),
    through its logger with OneLineErrors on it."""
    from flwr.common.logger import log

    logger = logging.getLogger("flwr")
    captured: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: captured.append(handler.format(record))  # type: ignore[method-assign]
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    only = OneLineErrors()
    logger.addHandler(handler)
    logger.addFilter(only)
    try:
        try:
            raise error
        except BaseException as exc:
            log(logging.ERROR, "%s raised an exception", "ServerApp", exc_info=exc)
    finally:
        logger.removeFilter(only)
        logger.removeHandler(handler)
    return "\n".join(captured)


def test_a_fedcredit_error_is_one_line_in_flowers_log_and_a_bug_keeps_its_traceback():
    out = _flower_log(RunFailed("the federation has 2 SuperNode(s) but the run has 3 lenders"))
    assert out == "ERROR fedcredit: the run failed: the federation has 2 SuperNode(s) but the run has 3 lenders"
    assert _flower_log(reported(FedCreditError("shown already"))) == ""  # the ServerApp printed it: not twice
    bug = _flower_log(KeyError("a bug"))
    assert "Traceback (most recent call last)" in bug and "KeyError: 'a bug'" in bug


def test_flowers_lines_appear_once_in_the_serverapps_process():
    # In the ServerApp's process once its run has started (flwr-serverapp): Opacus (imported for the accountants)
    # gives the root logger a handler, and each of Flower's lines would be printed by it a second time.
    code = (
        "import logging, server.app, server.loop; from flwr.common.logger import log; "
        "print('root handlers:', len(logging.getLogger().handlers)); log(logging.INFO, 'marker-line')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, check=True
    )
    output = done.stdout + done.stderr
    assert "root handlers: 1" in output  # the cause is there
    assert len([line for line in output.splitlines() if "marker-line" in line]) == 1


class _Simulated(InMemoryGrid):
    """Flower's simulation Grid, with its nodes registered: the federation `flwr run .` starts locally."""

    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def get_node_ids(self):
        return self.nodes


class _Joining:
    """A deployment's Grid: a SuperNode connects at each look."""

    def __init__(self, total: int) -> None:
        self.total, self.looks = total, 0

    def get_node_ids(self):
        self.looks += 1
        return list(range(min(self.looks - 1, self.total)))


def test_a_simulated_federation_with_too_few_supernodes_fails_without_waiting_for_the_timeout():
    with pytest.raises(RunFailed) as caught:
        wait_for_nodes(_Simulated(2), 3, timeout=600)  # the timeout's message would say "within 600 s"
    message = str(caught.value)
    assert "the federation has 2 SuperNode(s) but the run has 3 lenders" in message
    assert "lenders=2" in message and "num-supernodes=3" in message and "600" not in message
    assert wait_for_nodes(_Simulated(3), 3) == [1, 2, 3]


def test_a_deployment_waits_for_its_supernodes_to_connect_and_says_so(capsys):
    assert wait_for_nodes(_Joining(3), 3, timeout=600, settle=0) == [0, 1, 2]
    out = capsys.readouterr().out
    assert "waiting for 3 SuperNodes, one per lender: 0 connected" in out
    assert "waiting for 3 SuperNodes, one per lender: 2 connected" in out


def _flwr_run_config(**overrides) -> dict:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return {**table, **overrides}


def test_the_serverapp_under_flwr_run_prints_the_table_and_paths_fedcredit_run_prints(tmp_path, monkeypatch, capsys):
    from clients.app import app as client_app
    from fedcredit.cli import _print_summary
    from fedcredit.inprocess_grid import InProcessGrid
    from server.app import app as server_app

    # `flwr run .` with neither node configs nor lender folders: each lender's demo folder under $FLWR_HOME
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    output = tmp_path / "run"
    run_config = _flwr_run_config(lenders=2, records=1200, rounds=1, **{"output-dir": str(output)})
    server_app(InProcessGrid(client_app, 2), Context(1, 0, {}, RecordDict(), run_config))
    printed = capsys.readouterr().out
    at_end = printed[printed.index("round 1:") :].split("\n", 1)[1]
    _print_summary(output)
    assert at_end == capsys.readouterr().out  # the same table and lines, character for character
    assert at_end.splitlines()[0].strip() == "Lenders after round 1"
    rows = [line.replace("│", " ").split() for line in at_end.splitlines()]  # with or without vertical rules
    for lender in read_summary(output)["lenders"]:
        assert [str(lender["lender"]), str(lender["train_records"])] in [row[:2] for row in rows]
    assert ["global"] in [row[:1] for row in rows]
    flat = "".join(at_end.split())  # a path rich folded at 80 columns, whole again
    for label, path in (("runfolder:", output), ("privacyreport:", output / "report.html")):
        assert label in flat and str(path) in flat


# ---- the real `flwr run .`: Flower's local SuperLink (simulation runtime), started by `flwr` itself ------------


def _ours(home: Path) -> list[psutil.Process]:
    """Every process started for this test: the local SuperLink, its SuperExec, flwr-simulation and Ray's, all
    started with FLWR_HOME = `home` (Flower detaches them into sessions of their own: no common parent to follow)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLWR_HOME") == str(home) and proc.pid != os.getpid():
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.fixture
def local_flower(tmp_path):
    """`flwr`'s environment for a local SuperLink of this test's own (its own FLWR_HOME and ports, so that no other
    local SuperLink is used); afterwards every process it started is stopped by id, and none is left."""
    home = tmp_path / "flwr-home"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    yield env
    procs = _ours(home)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=15)
    assert not [p for p in _ours(home) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.simulation
def test_flwr_run_with_fewer_supernodes_than_lenders_fails_in_one_line(local_flower, tmp_path):
    output = tmp_path / "run"
    done = subprocess.run(
        [
            FLWR,
            "run",
            str(ROOT),
            "--run-config",
            f"lenders=2 records=1200 rounds=1 output-dir='{output}'",
            "--federation-config",
            "num-supernodes=1",  # not Flower's default (2): the flag the failure line suggests sizes the federation
            "--stream",
        ],
        env=local_flower,
        capture_output=True,
        text=True,
        timeout=110,  # a hang guard only: the 120 s wait for SuperNodes would run into it
        cwd=tmp_path,
        check=False,
    )
    log = done.stdout + done.stderr
    failed = [line for line in log.splitlines() if "fedcredit: the run failed:" in line]
    assert len(failed) == 1, log
    assert failed[0].endswith(
        "fedcredit: the run failed: the federation has 1 SuperNode(s) but the run has 2 lenders (one SuperNode per "
        "lender): run with lenders=1 (--run-config 'lenders=1') or with 2 SuperNodes "
        "(--federation-config 'num-supernodes=2')"
    )
    assert "Traceback" not in log and "RunFailed" not in log
    assert not output.exists() and not Path(f"{output}-keys").exists()
    # `flwr run` itself exits 0 for a run it submitted, whatever became of it (flwr 1.42); the run's status says
    run_id = next(line.split()[-1] for line in done.stdout.splitlines() if "Successfully started run" in line)
    listed = subprocess.run(
        [FLWR, "ls", "--run-id", run_id, "--format", "json"],
        env=local_flower,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=True,
    )
    (run,) = json.loads(listed.stdout)["runs"]
    assert run["status"] == "finished:failed"
    assert "the federation has 1 SuperNode(s) but the run has 2 lenders" in run["status-details"]
