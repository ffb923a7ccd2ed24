"""The coordinator and three lenders as separate hosts on this machine, each on its own loopback address
(127.0.0.11 for the coordinator, 127.0.0.12-14 for the lenders), each party with its own folder, keys, data and
policy, started with its own command: `fedcredit coordinator start`, `fedcredit lender join`, `fedcredit coordinator
run`. Nothing here dials an address outside what the test made, and every process is stopped by id."""

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from typer.testing import CliRunner

from clients.home import LenderHome, init_lender
from clients.join import supernode_key
from fedcredit.cli import app
from fedcredit.runner import run
from federation.audit_trail.verify import verify_run
from federation.config import RunConfig
from federation.lender_policy import for_simulated_lender
from federation.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
COORDINATOR = "127.0.0.11"
LENDER_HOSTS = ["127.0.0.12", "127.0.0.13", "127.0.0.14"]
CFG = RunConfig(records=6000, lenders=3, rounds=2, seed=1, reproducible_noise_not_private=True)


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fedcredit.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(processes: list[subprocess.Popen]) -> list[psutil.Process]:
    tree = []
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            tree += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
    for p in processes:
        if p.poll() is None:
            p.terminate()  # the command stops what it started (SIGTERM = Ctrl-C)
    for p in processes:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    _, alive = psutil.wait_procs(tree, timeout=15)
    for proc in alive:
        proc.kill()
    return tree


def _wait_port(host: str, port: int, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read())
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"nothing listens on {host}:{port}")


def _serve_tls_once(host: str, port: int, cert: Path, key: Path, stop: threading.Event) -> threading.Thread:
    """A TLS server presenting the coordinator's own certificate on an address it was not made for."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = socket.create_server((host, port))
    server.settimeout(0.5)

    def serve():
        with server:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                try:
                    context.wrap_socket(conn, server_side=True).close()
                except (ssl.SSLError, OSError):
                    conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.deployment
def test_coordinator_and_three_lenders_on_their_own_hosts(tmp_path):
    port = free_port(COORDINATOR)
    coord = tmp_path / "coordinator-host"
    runner = CliRunner()
    made = runner.invoke(
        app,
        [
            "coordinator",
            "init",
            "--dir",
            str(coord),
            "--address",
            f"{COORDINATOR}:{port}",
            "--name",
            "coordinator.fedcredit.test",
        ],
    )
    assert made.exit_code == 0, made.output
    ca = coord / "tls" / "public" / "ca.crt"
    # Each lender on its own host: its folder, its policy (its share of the data), its keys; it sends the
    # coordinator only its SuperNode public key.
    homes = []
    for lender in range(CFG.lenders):
        folder = tmp_path / f"lender-host-{lender}" / "bank"
        init_lender(folder, for_simulated_lender(CFG, lender))
        _, public = supernode_key(LenderHome(folder))
        added = runner.invoke(
            app,
            ["coordinator", "add-lender", "--dir", str(coord), "--lender", str(lender), "--supernode-key", str(public)],
        )
        assert added.exit_code == 0, added.output
        homes.append(folder)
    processes = []
    try:
        coordinator = _cli("coordinator", "start", "--dir", str(coord))
        processes.append(coordinator)
        _wait_port(COORDINATOR, port, coordinator)
        internal = json.loads((coord / "coordinator.json").read_text())["internal_port"]
        # The Control API is for the coordinator's operator only: the SuperLink binds 127.0.0.1, and the public
        # address serves the Fleet API alone.
        with socket.socket() as s:
            assert s.connect_ex((COORDINATOR, internal)) != 0
        refused = httpx.post(f"https://{COORDINATOR}:{port}/v1/control/list-runs", verify=str(ca), content=b"")
        assert refused.status_code == 404
        for lender, folder in enumerate(homes):
            processes.append(
                _cli(
                    "lender",
                    "join",
                    "--lender-dir",
                    str(folder),
                    "--superlink",
                    f"{COORDINATOR}:{port}",
                    "--ca",
                    str(ca),
                    "--listen-host",
                    LENDER_HOSTS[lender],
                )
            )
        # A SuperNode whose key the coordinator never received is turned away, in one line.
        intruder = tmp_path / "intruder-host" / "bank"
        init_lender(intruder, for_simulated_lender(CFG, 0))
        refused_node = _cli(
            "lender",
            "join",
            "--lender-dir",
            str(intruder),
            "--superlink",
            f"{COORDINATOR}:{port}",
            "--ca",
            str(ca),
            "--listen-host",
            "127.0.0.16",
        )
        processes.append(refused_node)
        out, _ = refused_node.communicate(timeout=180)
        assert refused_node.returncode == 2 and "its key is not registered" in " ".join(out.split()), out
        # Dialling an address the coordinator's certificate does not carry fails before any SuperNode starts.
        stop = threading.Event()
        _serve_tls_once(
            "127.0.0.15", port, coord / "tls" / "public" / "server.crt", coord / "tls" / "public" / "server.key", stop
        )
        wrong = runner.invoke(
            app, ["lender", "join", "--lender-dir", str(homes[0]), "--superlink", f"127.0.0.15:{port}", "--ca", str(ca)]
        )
        stop.set()
        assert wrong.exit_code == 2 and "does not carry the name 127.0.0.15" in " ".join(wrong.output.split())
        unreachable = runner.invoke(
            app,
            [
                "lender",
                "join",
                "--lender-dir",
                str(homes[0]),
                "--superlink",
                f"127.0.0.17:{free_port('127.0.0.17')}",
                "--ca",
                str(ca),
            ],
        )
        assert unreachable.exit_code == 2 and "no SuperLink answers" in unreachable.output
        started = time.time()
        done = runner.invoke(
            app,
            [
                "coordinator",
                "run",
                "--dir",
                str(coord),
                "--lenders",
                "3",
                "--rounds",
                "2",
                "--set",
                "seed=1",
                "--set",
                "records=6000",
                "--set",
                "reproducible-noise-not-private=true",
                "--output-dir",
                str(tmp_path / "deployed"),
            ],
        )
        seconds = time.time() - started
        assert done.exit_code == 0, done.output
    finally:
        tree = _stop(processes)
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in tree)
    deployed = tmp_path / "deployed"
    simulated = run(CFG.replace(engine="inprocess", output_dir=str(tmp_path / "simulated")), on_round=lambda s: None)
    first, second = torch.load(deployed / "model.pt"), torch.load(simulated / "model.pt")
    assert max(float((first[k] - second[k]).abs().max()) for k in first) < 1e-4
    # The regulator builds the registry from what each party published, and the deployed run verifies against it.
    registry = tmp_path / "registry.json"
    built = runner.invoke(
        app,
        [
            "registry",
            "build",
            "-o",
            str(registry),
            "--coordinator",
            str(coord / "keys" / "coordinator.pub"),
            *[f"--lender={i}={h / 'identity.pub'}" for i, h in enumerate(homes)],
        ],
    )
    assert built.exit_code == 0, built.output
    assert verify_run(deployed, registry).pinned
    for folder in homes:  # each lender's releases are in its own folder, nowhere else
        assert json.loads((folder / "state" / "spent.json").read_text())["runs"]
    print(f"multi-host run: {seconds:.0f} s for 2 rounds")
