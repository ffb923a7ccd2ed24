"""A lender joins a federation from its own host: its SuperNode, dialling the coordinator's address.

The lender's folder (clients/home.py) also holds its SuperNode authentication key (`supernode.key`, made here or by
`fedcredit lender init`, ECDSA P-384 as Flower's SuperNode authentication uses); the lender sends the coordinator
`supernode.pub` and the regulator `identity.pub`. Before it starts the SuperNode it checks what it dials: the
address parses, something answers there, and the TLS certificate it presents is signed by the coordinator's CA
and carries the name dialled, so that a wrong address, an unreachable SuperLink or a certificate for another name
is one clear line, not a SuperNode retrying forever. Then it runs `flower-supernode` with a node config that names
only its lender id and its folder (its data, card, limits and keys stay here, and the coordinator reads none of
it), in process isolation, and its worker (clients/worker.py: its own long-lived process, which runs every task the
SuperNode receives with the lender's own installed code, instead of a ClientApp process per message).
"""

from __future__ import annotations

import socket
import ssl
import sys
import time
from pathlib import Path

from clients.home import LenderHome
from federation.deploy_pki import make_node_key
from federation.processes import DeploymentError, ProcessGroup, flower_env, free_port, parse_address, tool

SUPERNODE_KEY = "supernode"
POLL_S = 0.25  # the SuperNode's longest wait between two pulls from the SuperLink (Flower's: 3 s)
REFUSED = "Failed to activate SuperNode"  # what Flower's SuperNode logs when the SuperLink does not know its key


def supernode_key(home: LenderHome) -> tuple[Path, Path]:
    """The lender's SuperNode key pair in its own folder (made once)."""
    private, public = home.folder / f"{SUPERNODE_KEY}.key", home.folder / f"{SUPERNODE_KEY}.pub"
    if not private.exists():
        make_node_key(home.folder, SUPERNODE_KEY)
    return private, public


def check_superlink(address: str, ca: Path, timeout: float = 10.0) -> None:
    """One DeploymentError line unless `address` answers with a certificate from `ca` for the name dialled."""
    host, port = parse_address(address)
    if not Path(ca).is_file():
        raise DeploymentError(f"the coordinator's CA certificate {ca} was not found")
    try:
        context = ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as exc:
        raise DeploymentError(f"{ca} is not a CA certificate ({exc.reason})") from None
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return
    except ssl.SSLCertVerificationError as exc:
        if "mismatch" in str(exc.verify_message).lower():
            raise DeploymentError(
                f"the SuperLink at {address} presents a certificate that does not carry the name "
                f"{host}: dial one of the names the coordinator's certificate was made for"
            ) from None
        raise DeploymentError(
            f"the SuperLink at {address} presents a certificate not signed by {ca} ({exc.verify_message})"
        ) from None
    except (ConnectionRefusedError, TimeoutError, OSError) as exc:
        raise DeploymentError(
            f"no SuperLink answers at {address} ({exc.__class__.__name__}: {getattr(exc, 'strerror', None) or exc})"
        ) from None


class LenderNode:
    """A lender's SuperNode, started from its own folder against the coordinator's address."""

    def __init__(
        self, lender_dir: Path, superlink: str, ca: Path, listen_host: str = "127.0.0.1", worker: bool = True
    ) -> None:
        self.home = LenderHome(lender_dir)
        self.superlink, self.ca, self.listen_host = superlink, Path(ca).resolve(), listen_host
        self.worker = worker
        self.group = ProcessGroup(
            self.home.folder / "logs", flower_env(self.home.folder / "flwr-home"), self.home.folder
        )

    def start(self) -> None:
        policy = self.home.policy  # a lender without its policy does not join
        self.home.identity  # noqa: B018  (made now if it is not yet: the lender's own key, in its own folder)
        private, _ = supernode_key(self.home)
        check_superlink(self.superlink, self.ca)
        node_config = f'lender-id={policy.lender} lender-dir="{self.home.folder}"'
        runtime_port = free_port(self.listen_host)
        # With its worker: Flower's SuperNode in process isolation, waiting less between pulls (clients/supernode.py);
        # without (worker=False): Flower's own, starting a ClientApp process per message.
        launcher = (
            [sys.executable, "-m", "clients.supernode", str(POLL_S)] if self.worker else [tool("flower-supernode")]
        )
        isolation = ["--isolation", "process"] if self.worker else []
        self.group.spawn(
            "supernode",
            [
                *launcher,
                "--superlink",
                self.superlink,
                "--root-certificates",
                str(self.ca),
                "--auth-supernode-private-key",
                str(private),
                "--node-config",
                node_config,
                "--host",
                self.listen_host,
                "--port",
                str(runtime_port),
                *isolation,
            ],
        )
        if self.worker:
            runtime = f"{self.listen_host}:{runtime_port}"
            self.group.spawn("worker", [sys.executable, "-m", "clients.worker", str(self.home.folder), runtime])

    def wait(self, poll: float = 0.5) -> int:
        """Until the SuperNode exits; a refusal of its key is said in one line (DeploymentError)."""
        process = self.group.processes["supernode"]
        while process.poll() is None:
            time.sleep(poll)
            worker = self.group.processes.get("worker")
            if worker is not None and worker.poll() is not None:  # the SuperNode alone would answer nothing
                self.stop()
                raise DeploymentError(
                    f"the lender's worker exited with {worker.returncode}: "
                    f"{' '.join(self.group.log_tail('worker').split()[-40:])}"
                )
            if REFUSED in self.group.log_tail("supernode", 4000):
                self.stop()
                raise DeploymentError(
                    f"the SuperLink at {self.superlink} refused this SuperNode: its key is not "
                    f"registered (send {self.home.folder / (SUPERNODE_KEY + '.pub')} to the "
                    "coordinator)"
                )
        if process.returncode:
            raise DeploymentError(
                f"the SuperNode exited with {process.returncode}: "
                f"{' '.join(self.group.log_tail('supernode').split()[-40:])}"
            )
        return 0

    def stop(self) -> None:
        self.group.stop()
