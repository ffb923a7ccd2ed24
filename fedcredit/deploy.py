"""`fedcredit deploy`: every role of a deployment on this one machine, for trying the deployment runtime locally.

It runs exactly what the parties run on their own hosts (README, "Deployment across machines"): the coordinator's
host (server/superlink_host.py: a SuperLink with TLS and SuperNode authentication on 127.0.0.1, its Fleet gateway,
`flwr run`) and one SuperNode per lender (clients/join.py: its own folder, node config `lender-id` and `lender-dir`
only). `prepare` sets every party up as it would set itself up (the coordinator's folder and certificates, each
lender's folder, policy, identity key and SuperNode key, the key registry); the `with` block starts every process and
stops each one by id when it ends, also on failure, when the secrets made for the run are removed again.

    RUN-deploy/coordinator/   the coordinator's folder (keys, TLS, the lenders' SuperNode keys, Flower's home, logs)
    RUN-lenders/lender_NNN/   each lender's own folder (also its SuperNode key and its SuperNode's logs)
    RUN-registry.json         the public keys the parties published
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import psutil

from clients.join import LenderNode, supernode_key
from federation.config import RunConfig
from federation.processes import DeploymentError, free_port
from server.superlink_host import CoordinatorHost

__all__ = ["Deployment", "DeploymentError", "LinePrinter"]


@dataclass
class Deployment:
    folder: Path
    lenders: int
    data_dir: str = ""  # every lender's data folder, unless data_dirs names one for it
    data_dirs: dict[int, str] = field(default_factory=dict)
    worker: bool = True  # each lender answers in its own worker (clients/worker.py); False: Flower's ClientApp
    nodes: list[LenderNode] = field(default_factory=list)
    made: list[Path] = field(default_factory=list)  # what `prepare` created (removed again if the run fails)
    finished: bool = False

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()
        self.host = CoordinatorHost(self.folder / "coordinator")

    @property
    def address(self) -> str:
        return self.host.config["address"]

    def prepare(self, cfg: RunConfig) -> RunConfig:
        """Validate the input and set every party up. Returns the configuration the coordinator will request (with
        the card every lender must hold, and the coordinator's own key folder)."""
        from fedcredit.runner import Parties, set_up_parties, validate

        if self.folder.exists() and any(self.folder.iterdir()):
            raise DeploymentError(f"{self.folder} is not empty: a deployment folder is made fresh for each run")
        summary = validate(cfg.replace(data_dir=self.data_dir or cfg.data_dir))
        parties = Parties(Path(cfg.output_dir).resolve())
        self.made = [p for p in (self.folder, parties.lenders, parties.registry) if not p.exists()]
        try:
            self.host.init(f"127.0.0.1:{free_port()}", ["localhost"])
            cfg = cfg.replace(
                card_sha256=cfg.card_sha256 or summary.card_sha256, keys_dir=str(self.host.folder / "keys")
            )
            set_up_parties(cfg.replace(data_dir=self.data_dir or cfg.data_dir), parties, data_dirs=self.data_dirs)
            ca = self.host.folder / "tls" / "public" / "ca.crt"
            for lender in range(self.lenders):
                _, public = supernode_key(_home(parties.lender(lender)))
                self.host.add_lender(lender, public)
                self.nodes.append(LenderNode(parties.lender(lender), self.address, ca, worker=self.worker))
        except BaseException:
            self.__exit__()
            raise
        return cfg

    def __enter__(self) -> Deployment:
        if not self.nodes:
            raise DeploymentError("the deployment is not prepared: call prepare(cfg) before starting it")
        try:
            self.host.start()
            for node in self.nodes:
                node.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for node in self.nodes:
            node.stop()
        self.host.stop()
        if not self.finished:  # secrets made for a run that did not finish protect nothing: leave no trace
            shutil.rmtree(self.host.folder / "keys", ignore_errors=True)
            for path in self.made:
                if path != self.folder:
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    def run(self, cfg: RunConfig, timeout: float = 900.0, on_line: Callable[[str], None] | None = None) -> Path:
        """`flwr run` on the started deployment; each line of the ServerApp's output to `on_line` as it comes."""
        output = self.host.run(cfg, timeout, on_line)
        self.finished = True
        return output

    def process_tree(self) -> list[psutil.Process]:
        return [p for group in [self.host.group, *(n.group for n in self.nodes)] for p in group.tree()]


class LinePrinter:
    """Prints each line of the run's output on stdout as it comes. Once nobody reads stdout any more (`fedcredit
    deploy | head`, a closed terminal pipe) it stops printing and the run goes on: its lines are in the log."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.closed = False

    def __call__(self, line: str) -> None:
        if self.closed:
            return
        try:
            stream = self.stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
            self.closed = True


def _home(folder: Path):
    from clients.home import LenderHome

    return LenderHome(folder)
