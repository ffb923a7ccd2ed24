"""Flower's deployment runtime on this machine: a SuperLink, one SuperNode per lender, `flwr run`.

`Deployment` (a context manager) makes a run-local CA and the SuperLink's TLS certificate, one SuperNode
authentication key per lender (federation/deploy_pki.py), starts `flower-superlink` with TLS and
SuperNode authentication on, registers each lender's public key with `flwr supernode register`, starts
one `flower-supernode` per lender with its own node config (lender-id, lender-dir: the lender's own folder, with
its policy and the identity key it makes itself; the coordinator never creates or reads a lender's key), and runs
the same ServerApp and ClientApp as the simulation with `flwr run`. Every process it starts, and every
process those start, is stopped by its process id when the block ends, also on failure.
The deployment's own things live in one folder: tls/, node-keys/, flwr-home/ (the `flwr` CLI's config, with a
connection to this SuperLink that trusts only the run-local CA) and logs/; each lender's folder and the key
registry sit beside the run folder, as for a simulated run (federation/runner.py, `Parties`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from federation.config import RunConfig
from federation.deploy_pki import make_node_key, make_tls
from federation.errors import FedCreditError

CONNECTION = "fedcredit-deployment"
PROJECT = Path(__file__).resolve().parent.parent  # the Flower app: pyproject.toml [tool.flwr.app]


class DeploymentError(FedCreditError):
    """A process of the deployment did not start, a key was refused, or the run failed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(name: str) -> str:
    """A console script of this environment (beside the interpreter), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise DeploymentError(f"'{name}' was not found: install flwr in this environment")
    return found


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Deployment:
    folder: Path
    lenders: int
    data_dir: str = ""  # every SuperNode's data-dir, unless data_dirs names one for its lender
    data_dirs: dict[int, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()
        self.logs = self.folder / "logs"
        # The SuperLink and SuperNodes start flower-superexec by name: this environment's scripts come first.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, "PATH": path, "FLWR_HOME": str(self.folder / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}

    # ---- set-up ----------------------------------------------------------------------------
    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        if not self.finished:  # secrets made for a run that did not finish protect nothing: leave no trace
            for path in self.made:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    def start(self) -> None:
        if self.folder.exists() and any(self.folder.iterdir()):
            raise DeploymentError(f"{self.folder} is not empty: a deployment folder is made fresh for each run")
        self.logs.mkdir(parents=True)
        self.tls = make_tls(self.folder / "tls")
        self.node_keys = [make_node_key(self.folder / "node-keys", f"lender_{i:03d}") for i in range(self.lenders)]
        # Flower 1.41 serves its Fleet, Control and runtime APIs over HTTPS on one port.
        self.ports = {"superlink": free_port()}
        self._write_connection()
        self._spawn("superlink", [
            _tool("flower-superlink"), "--ssl-ca-certfile", str(self.tls["ca"]), "--ssl-certfile", str(self.tls["cert"]),
            "--ssl-keyfile", str(self.tls["key"]), "--enable-supernode-auth",
            "--host", "127.0.0.1", "--port", str(self.ports["superlink"]),
        ])
        self._wait_for_port(self.ports["superlink"], "superlink")
        for lender in range(self.lenders):
            self.register(self.node_keys[lender][1])
        for lender in range(self.lenders):
            self.start_supernode(lender, *self.node_keys[lender])

    def _write_connection(self) -> None:
        home = self.folder / "flwr-home"
        home.mkdir(parents=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.ports["superlink"]}"\nroot-certificates = {_toml_string(str(self.tls["ca"]))}\n'
        )

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.folder)
        log.close()
        self.processes[name] = process
        return process

    def _wait_for_port(self, port: int, name: str, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.processes[name].poll() is not None:
                raise DeploymentError(f"{name} exited with {self.processes[name].returncode}: {self.log_tail(name)}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise DeploymentError(f"{name} did not open port {port} within {timeout:.0f} s: {self.log_tail(name)}")

    def flwr(self, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
        return subprocess.run([_tool("flwr"), *args], env=self.env, cwd=PROJECT, capture_output=True, text=True,
                              timeout=timeout)

    def register(self, public_key: Path) -> None:
        done = self.flwr("supernode", "register", str(public_key), CONNECTION, timeout=120)
        if done.returncode != 0:
            raise DeploymentError(f"registering {public_key.name} failed: {(done.stdout + done.stderr).strip()[-500:]}")

    def start_supernode(self, lender: int, private_key: Path, public_key: Path, name: str | None = None) -> subprocess.Popen:
        """A SuperNode for `lender`, authenticating with the given key pair (registered or not)."""
        name = name or f"supernode_{lender:03d}"
        node_config = f"lender-id={lender} lender-dir={_toml_string(str(self.lender_dirs(lender)))}"
        return self._spawn(name, [
            _tool("flower-supernode"), "--superlink", f"127.0.0.1:{self.ports['superlink']}",
            "--root-certificates", str(self.tls["ca"]), "--auth-supernode-private-key", str(private_key),
            "--port", str(free_port()), "--node-config", node_config,
        ])

    lenders_root: Path | None = None  # where each lender's own folder is (set by `prepare`)
    made: list[Path] = field(default_factory=list)  # what `prepare` created (removed again if the run fails)
    finished: bool = False

    def lender_dirs(self, lender: int) -> Path:
        from federation.audit_trail.keys import lender_name

        if self.lenders_root is None:
            raise DeploymentError("the lenders' folders are not set up: call prepare(cfg) before starting SuperNodes")
        return self.lenders_root / lender_name(lender)

    def prepare(self, cfg: RunConfig) -> RunConfig:
        """Validate the input and set every party up as it would itself: the coordinator's key, each lender's
        folder, policy and identity key (on the lender's behalf, as `fedcredit lender init` would on its machine),
        the key registry. Returns the configuration the coordinator will request (with the card every lender
        must hold)."""
        from federation.runner import Parties, set_up_parties, validate

        if self.folder.exists() and any(self.folder.iterdir()):
            raise DeploymentError(f"{self.folder} is not empty: a deployment folder is made fresh for each run")
        summary = validate(cfg.replace(data_dir=self.data_dir or cfg.data_dir))
        cfg = cfg.replace(card_sha256=cfg.card_sha256 or summary.card_sha256)
        parties = Parties(Path(cfg.output_dir).resolve())
        self.made = [p for p in (parties.keys, parties.lenders, parties.registry) if not p.exists()]
        try:
            set_up_parties(cfg.replace(data_dir=self.data_dir or cfg.data_dir), parties, data_dirs=self.data_dirs)
        except BaseException:
            self.__exit__()
            raise
        self.lenders_root = parties.lenders
        return cfg

    # ---- the run -----------------------------------------------------------------------------
    def run(self, cfg: RunConfig, timeout: float = 600.0) -> Path:
        """`flwr run` the app on this deployment with `cfg` (from `prepare`); the run folder when it finished."""
        output = Path(cfg.output_dir).resolve()
        overrides = {k: v for k, v in cfg.to_record().items() if k not in ("engine",)}
        overrides["output-dir"] = str(output)
        run_config = " ".join(f"{k}={_toml_value(v)}" for k, v in overrides.items())
        done = self.flwr("run", str(PROJECT), CONNECTION, "--run-config", run_config, "--stream", timeout=timeout)
        (self.logs / "flwr-run.log").write_text(done.stdout + done.stderr)
        if not (output / "report.json").exists():
            raise DeploymentError(f"the run did not finish (flwr run exited {done.returncode}); see {self.logs / 'flwr-run.log'}: "
                                  f"{(done.stdout + done.stderr).strip()[-800:]}")
        self.finished = True
        return output

    # ---- tear-down ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every process this deployment started, and everything they started, by process id:
        TERM, then KILL. Flower detaches its SuperExec processes into sessions of their own, so the
        tree is collected from the parent links first (psutil) instead of signalling process groups."""
        tree = self.process_tree()
        for proc in tree:
            _send(proc, signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=10)
        for proc in alive:
            _send(proc, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
        for process in self.processes.values():
            process.poll()  # reap our direct children

    def process_tree(self) -> list[psutil.Process]:
        """The processes this deployment started and, recursively, those they started."""
        tree = []
        for process in self.processes.values():
            try:
                root = psutil.Process(process.pid)
                tree += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return tree

    def log_tail(self, name: str, chars: int = 800) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _send(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _toml_string(str(value))
