"""The lender's own folder: its identity key, its data-commitment key, its privacy policy and its privacy state.

    LENDER_DIR/                (0700)
      policy.toml              the lender's limits and which records it holds (federation/lender_policy.py)
      identity.key             Ed25519 private key, PEM, 0600: what "signed by lender i" means
      identity.pub             its public key (hex): what the lender publishes for the key registry
      commitment.key           32 random bytes, 0600: the key of the HMAC that commits to its records
      state/spent.json         every privacy release of every run made with this folder, 0600
      state/sent/RUN/...       the exact replies it sent, so that a repeated request gets the same bytes back
                               instead of a new release
      cache/records.npz        a deployed lender's own records as encoded for its last data configuration, 0600,
                               with the key they were made under (clients/record_cache.py): Flower starts a process
                               per message, and each would otherwise read and encode the records again

Only the lender's code opens these files (a test watches every file the coordinator's code opens). The
coordinator learns the public key from the lender's signed manifest, nothing else. In deployment the folder
is named by the SuperNode's node config (`lender-dir`); in simulation fedcredit makes one per simulated lender
beside the run folder, and each is opened only by that lender's ClientApp.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import io
import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit_trail.keys import load_or_create, public_hex, write_private
from federation.errors import ConfigError
from federation.lender_policy import LenderPolicy, load_policy
from federation.lender_records import LenderData
from federation.registry import Registry, fingerprint, load_registry

IDENTITY = "identity"
COMMITMENT_KEY = "commitment.key"
RECORDS_CACHE = "records.npz"
_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def init_lender(folder: str | Path, policy: LenderPolicy) -> str:
    """What `fedcredit lender init` does on the lender's machine: the folder (0700), the policy, a new identity
    key and commitment key (kept if they exist). Returns the public key the lender publishes."""
    home = LenderHome(folder)
    home.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home.folder, 0o700)
    policy.write(home.folder)
    home.commitment_key()
    return home.public_hex


@dataclass
class LenderHome:
    folder: Path

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).resolve()

    # ---- what the lender is -------------------------------------------------------------------
    @cached_property
    def policy(self) -> LenderPolicy:
        return load_policy(self.folder)

    @cached_property
    def identity(self) -> Ed25519PrivateKey:
        key = load_or_create(self.folder, IDENTITY)
        pub = self.folder / f"{IDENTITY}.pub"
        if not pub.exists():
            pub.write_text(public_hex(key) + "\n")
        return key

    @property
    def public_hex(self) -> str:
        return public_hex(self.identity)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_hex)

    @cached_property
    def registry(self) -> Registry | None:
        """The keys this lender pinned (its policy's registry), or None when it pinned none."""
        return load_registry(self.policy.registry) if self.policy.registry else None

    def commitment_key(self) -> bytes:
        path = self.folder / COMMITMENT_KEY
        if not path.exists():
            write_private(path, os.urandom(32))
        key = path.read_bytes()
        if len(key) != 32:
            raise ConfigError(f"{path} is not a 32-byte key")
        return key

    def commit(self, data: bytes) -> str:
        """A keyed commitment to the lender's records (HMAC-SHA256 under a key only it holds): it binds the data
        the lender used, and unlike a plain hash it cannot be used to test a guess of the records."""
        return hmac.new(self.commitment_key(), data, hashlib.sha256).hexdigest()

    # ---- privacy state ------------------------------------------------------------------------
    @property
    def state(self) -> Path:
        path = self.folder / "state"
        path.mkdir(exist_ok=True, mode=0o700)
        return path

    @contextmanager
    def spent(self) -> Iterator[dict[str, Any]]:
        """The lender's record of every release it made, locked for the whole read-change-write (in deployment
        Flower may run two of this lender's ClientApp processes at once). Changes are saved on exit, whatever
        happened in the block."""
        lock_path = self.state / ".lock"
        with os.fdopen(os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.state / "spent.json"
            data = json.loads(path.read_text()) if path.exists() else {"runs": {}}
            try:
                yield data
            finally:  # also when the block fails: a release counted before training stays counted
                _write_secret(path, json.dumps(data, sort_keys=True).encode())

    def sent_reply(self, run: str, rnd: int, digest: str) -> dict | None:
        path = self._sent_path(run, rnd, digest)
        return json.loads(path.read_text()) if path.exists() else None

    def save_sent_reply(self, run: str, rnd: int, digest: str, reply: dict) -> None:
        """Persisted before the reply leaves the lender: a coordinator that asks again (after its own crash)
        gets exactly these bytes, which reveal nothing new and cost nothing more."""
        path = self._sent_path(run, rnd, digest)
        path.parent.parent.mkdir(exist_ok=True, mode=0o700)  # mkdir(parents=True) would make sent/ 0755
        path.parent.mkdir(exist_ok=True, mode=0o700)
        _write_secret(path, json.dumps(reply, sort_keys=True).encode())

    def _sent_path(self, run: str, rnd: int, digest: str) -> Path:
        return self.state / "sent" / run[:32] / f"round-{rnd}-{digest[:32]}.json"

    # ---- the lender's encoded records, cached in its own folder -------------------------------
    @property
    def records_cache(self) -> Path:
        folder = self.folder / "cache"
        folder.mkdir(exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        return folder / RECORDS_CACHE

    def cached_records(self, key: str) -> LenderData | None:
        """The records saved under `key`, or None when there are none, they were saved under another key (the
        lender's CSV, card, policy or data code changed since) or the file cannot be read (it is then rewritten)."""
        path = self.records_cache
        try:
            with np.load(path, allow_pickle=False) as file:
                meta = json.loads(file["meta"].tobytes())
                if meta.get("key") != key:
                    return None
                arrays = {name: file[name] for name in _ARRAYS}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None
        return LenderData(meta["lender"], **arrays, features=meta["features"], manifest=meta["manifest"])

    def save_records(self, key: str, data: LenderData) -> None:
        """One file, replaced whole (0600 from the first byte): the last data configuration's records only."""
        meta = {"key": key, "lender": data.lender, "features": data.features, "manifest": data.manifest}
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
            **{name: getattr(data, name) for name in _ARRAYS},
        )
        _write_secret(self.records_cache, buffer.getvalue())


def _write_secret(path: Path, data: bytes) -> None:
    """Whole or not at all (temp file, then rename), and 0600 from the first byte."""
    tmp = path.with_name(path.name + ".partial")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
