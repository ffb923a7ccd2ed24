"""The coordinator's host: its folder, its SuperLink behind a Fleet-only gateway, and `flwr run` against it.

    COORD/                     (0700; only the coordinator's operator reads it)
      coordinator.json         the public address and names, the SuperLink's own port
      keys/                    the coordinator's Ed25519 signing key and checkpoint key (`keys-dir` of its runs)
      tls/public/              the certificate lenders dial (run-local CA with the names given, or the operator's own)
      tls/internal/            the SuperLink's own 127.0.0.1 certificate and CA (the gateway and `flwr` trust it)
      supernodes/lender_NNN.pub  each lender's SuperNode public key, as the lender sent it (registered at start)
      flwr-home/               the `flwr` CLI's home, with one connection: this SuperLink at 127.0.0.1
      logs/

The SuperLink listens on 127.0.0.1 only: Flower 1.42 serves its Fleet, Control and runtime APIs on one port, and
its OSS build has no account authentication, so the Control API (`flwr run`, registering SuperNodes) must be
reachable by the coordinator's operator alone. Lenders reach the Fleet API through the gateway
(server/fleet_gateway.py) on the public address. Nothing of a lender's is read here: its SuperNode public key
arrives as a file the lender sent, its identity key goes to the regulator's registry, not to this folder.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit_trail.keys import COORDINATOR, load_or_create, public_hex
from federation.config import LAUNCHER_ONLY, RunConfig
from federation.deploy_pki import check_brought_tls, make_tls
from federation.processes import DeploymentError, ProcessGroup, flower_env, free_port, parse_address, tool
from federation.registry import fingerprint

CONNECTION = "fedcredit-coordinator"
PROJECT = Path(__file__).resolve().parent.parent  # the Flower app: pyproject.toml [tool.flwr.app]


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return _toml_string(str(value))


def check_supernode_key(path: Path) -> str:
    """A SuperNode public key as Flower registers it: an OpenSSH ECDSA key (one line)."""
    try:
        text = Path(path).read_text().strip()
        key = serialization.load_ssh_public_key(text.encode())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DeploymentError(f"{path} is not a SuperNode public key ({exc.__class__.__name__})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DeploymentError(f"{path} is not an ECDSA key (Flower's SuperNode authentication uses ECDSA)")
    return text


@dataclass
class CoordinatorHost:
    folder: Path

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()
        self.group = ProcessGroup(self.folder / "logs", flower_env(self.folder / "flwr-home"), PROJECT)

    # ---- set-up, once -----------------------------------------------------------------------
    def init(
        self, address: str, names: list[str] | None = None, brought: tuple[Path, Path, Path] | None = None
    ) -> dict:
        """Make the folder: keys, certificates for `names` (the address's host is always one of them), the
        SuperLink's own port and the flwr connection. Returns what the coordinator publishes."""
        host, port = parse_address(address)
        names = list(dict.fromkeys([host, *(names or [])]))
        if (self.folder / "coordinator.json").exists():
            raise DeploymentError(f"{self.folder} is already a coordinator's folder")
        if brought:
            check_brought_tls(*brought, names=names)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = load_or_create(self.folder / "keys", COORDINATOR)
        public = self.folder / "tls" / "public"
        if brought:
            public.mkdir(parents=True, exist_ok=True, mode=0o700)
            for src, name in zip(brought, ("server.crt", "server.key", "ca.crt"), strict=False):
                shutil.copyfile(src, public / name)
            (public / "server.key").chmod(0o600)
        else:
            make_tls(public, names)
        make_tls(self.folder / "tls" / "internal", ["127.0.0.1"])
        internal_port = free_port()
        config = {
            "address": f"{host}:{port}",
            "names": names,
            "internal_port": internal_port,
            "coordinator_public_key": public_hex(key),
        }
        (self.folder / "coordinator.json").write_text(json.dumps(config, indent=2) + "\n")
        (self.folder / "keys" / f"{COORDINATOR}.pub").write_text(public_hex(key) + "\n")
        home = self.folder / "flwr-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{internal_port}"\n'
            f"root-certificates = {_toml_string(str(self.folder / 'tls' / 'internal' / 'ca.crt'))}\n"
        )
        (self.folder / "supernodes").mkdir(exist_ok=True)
        return {**config, "ca": str(public / "ca.crt"), "fingerprint": fingerprint(public_hex(key))}

    @property
    def config(self) -> dict:
        path = self.folder / "coordinator.json"
        if not path.exists():
            raise DeploymentError(f"{self.folder} is not a coordinator's folder (run `fedcredit coordinator init`)")
        return json.loads(path.read_text())

    def add_lender(self, lender: int, supernode_key: Path) -> Path:
        """Accept a lender's SuperNode public key (the file it sent); it is registered when the SuperLink starts."""
        text = check_supernode_key(supernode_key)
        target = self.folder / "supernodes" / f"lender_{lender:03d}.pub"
        if any(p.read_text().strip() == text for p in (self.folder / "supernodes").glob("*.pub") if p != target):
            raise DeploymentError("another lender already sent this SuperNode key")
        target.write_text(text + "\n")
        return target

    # ---- the SuperLink ------------------------------------------------------------------------
    def start(self) -> None:
        """The SuperLink on 127.0.0.1 with SuperNode authentication, every lender's key registered, then the
        gateway on the public address. Stop with `stop()` (every process by id)."""
        config = self.config
        internal, public = self.folder / "tls" / "internal", self.folder / "tls" / "public"
        port = config["internal_port"]
        try:
            self.group.spawn(
                "superlink",
                [
                    tool("flower-superlink"),
                    "--ssl-ca-certfile",
                    str(internal / "ca.crt"),
                    "--ssl-certfile",
                    str(internal / "server.crt"),
                    "--ssl-keyfile",
                    str(internal / "server.key"),
                    "--enable-supernode-auth",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
            )
            self.group.wait_for_port("127.0.0.1", port, "superlink")
            for key in sorted((self.folder / "supernodes").glob("lender_*.pub")):
                done = self.flwr("supernode", "register", str(key), CONNECTION, timeout=120)
                if done.returncode != 0:
                    raise DeploymentError(
                        f"registering {key.name} failed: {(done.stdout + done.stderr).strip()[-300:]}"
                    )
            host, public_port = parse_address(config["address"])
            self.group.spawn(
                "gateway",
                [
                    sys.executable,
                    "-m",
                    "server.fleet_gateway",
                    "--listen",
                    config["address"],
                    "--certfile",
                    str(public / "server.crt"),
                    "--keyfile",
                    str(public / "server.key"),
                    "--upstream",
                    f"https://127.0.0.1:{port}",
                    "--upstream-ca",
                    str(internal / "ca.crt"),
                ],
            )
            self.group.wait_for_port(host, public_port, "gateway")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.group.stop()

    def flwr(self, *args: str, timeout: float = 600.0):
        return subprocess.run(
            [tool("flwr"), *args],
            env=self.group.env,
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run(self, cfg: RunConfig, timeout: float = 900.0, on_line: Callable[[str], None] | None = None) -> Path:
        """`flwr run` the federation with `cfg` on this SuperLink; the run folder when it finished. The coordinator's
        signing key is its own folder's (`keys-dir`). Each line of the ServerApp's output (`flwr run --stream`: its
        rounds as they complete, its warnings, its summary) goes to `on_line` as it comes, and to logs/flwr-run.log,
        with any text of this folder's secret keys taken out first."""
        output = Path(cfg.output_dir).resolve()
        cfg = cfg.replace(output_dir=str(output), keys_dir=str(self.folder / "keys"))
        overrides = {k: v for k, v in cfg.to_record().items() if k not in LAUNCHER_ONLY}  # not app config keys
        run_config = " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())
        command = [tool("flwr"), "run", str(PROJECT), CONNECTION, "--run-config", run_config, "--stream"]
        log_path = self.folder / "logs" / "flwr-run.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        secrets = secret_fragments(self.folder)
        lines: list[str] = []
        # `flwr` prints the stream with print(): unbuffered, each line arrives when the ServerApp writes it
        env = {**self.group.env, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(
            command, env=env, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        timed_out = threading.Event()

        def expire() -> None:  # the stream ends when the process does
            timed_out.set()
            process.kill()

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            with log_path.open("w") as log:
                assert process.stdout is not None
                for raw in process.stdout:
                    line = redact(raw.rstrip("\n"), secrets)
                    log.write(line + "\n")
                    log.flush()
                    lines.append(line)
                    if on_line:
                        on_line(line)
            process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:  # interrupted (Ctrl-C) or failed while reading: stop it, by its id
                process.kill()
                process.wait()
        if not (output / "report.json").exists():
            # the ServerApp's own line when it failed (server/app.py), else the end of what it printed
            failed = [line.split("fedcredit: ", 1)[1] for line in lines if "fedcredit: the run failed:" in line]
            why = failed[-1] if failed else " ".join(" ".join(lines).split()[-60:])
            ran = f"was stopped after {timeout:.0f} s" if timed_out.is_set() else f"exited {process.returncode}"
            raise DeploymentError(f"the run did not finish (flwr run {ran}; the log is {log_path}): {why}")
        return output


def secret_fragments(folder: Path) -> list[str]:
    """The text by which a secret key of the coordinator's folder could show in printed output: each base64 line of
    a PEM private key (its signing key, its TLS keys), the hex and base64 of the signing key's raw bytes and of its
    raw checkpoint key."""
    fragments: list[str] = []
    for path in [*(folder / "keys").glob("*"), *(folder / "tls").glob("*/*.key")]:
        if path.suffix == ".pub" or not path.is_file():
            continue
        data = path.read_bytes()
        if data.startswith(b"-----BEGIN"):
            fragments += [line for line in data.decode(errors="replace").splitlines() if not line.startswith("-----")]
            with contextlib.suppress(ValueError, TypeError):
                key = serialization.load_pem_private_key(data, password=None)
                if isinstance(key, Ed25519PrivateKey):  # the signing key's 32 raw bytes, as they could be printed
                    fragments += [key.private_bytes_raw().hex(), base64.b64encode(key.private_bytes_raw()).decode()]
        else:
            fragments += [data.hex(), base64.b64encode(data).decode()]
    return [f for f in fragments if len(f) >= 16]


def redact(line: str, fragments: list[str]) -> str:
    for fragment in fragments:
        line = line.replace(fragment, "[secret removed]")
    return line
