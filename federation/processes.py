"""The processes a deployment starts (SuperLink, gateway, SuperNodes), and stopping every one of them by id.

Flower detaches its SuperExec processes into sessions of their own, so a process group cannot be signalled as a
whole: the tree is collected from the parent links (psutil) and each process is sent TERM, then KILL.
"""

from __future__ import annotations

import contextlib
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

from federation.errors import FedCreditError


class DeploymentError(FedCreditError):
    """A process of the deployment did not start, a key was refused, or the run failed."""


def tool(name: str) -> str:
    """A console script of this environment (beside the interpreter), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise DeploymentError(f"'{name}' was not found: install flwr in this environment")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) or one DeploymentError line."""
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeploymentError(f"'{text}' is not an address HOST:PORT")
    return host, int(port)


def flower_env(home: Path) -> dict[str, str]:
    """The environment every process of a deployment runs in: this environment's scripts first (the SuperLink and
    SuperNodes start flower-superexec by name), Flower's home in the deployment folder, no telemetry, no runtime
    dependency installation, one torch thread. A SuperExec (the SuperLink's, for the ServerApp; a SuperNode's in
    subprocess isolation) looks for its next task every 0.2 s instead of Flower's 1 s."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {
        **os.environ,
        "PATH": path,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": os.environ.get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2"),
    }


@dataclass
class ProcessGroup:
    logs: Path
    env: dict[str, str]
    cwd: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        log.close()
        self.processes[name] = process
        return process

    def wait_for_port(self, host: str, port: int, name: str, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.processes[name].poll() is not None:
                raise DeploymentError(f"{name} exited with {self.processes[name].returncode}: {self.log_tail(name)}")
            with socket.socket() as s:
                if s.connect_ex((host, port)) == 0:
                    return
            time.sleep(0.2)
        raise DeploymentError(f"{name} did not open {host}:{port} within {timeout:.0f} s: {self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 800) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def tree(self) -> list[psutil.Process]:
        """The processes of this group and, recursively, those they started."""
        out = []
        for process in self.processes.values():
            try:
                root = psutil.Process(process.pid)
                out += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return out

    def stop(self) -> None:
        """TERM, then KILL, every process of the tree, by process id."""
        tree = self.tree()
        for proc in tree:
            _send(proc, signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=10)
        for proc in alive:
            _send(proc, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
        for process in self.processes.values():
            process.poll()  # reap our direct children


def _send(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        proc.send_signal(sig)
