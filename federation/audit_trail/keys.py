"""Ed25519 keys for the coordinator and each lender (cryptography).

Private keys live in a keys folder *outside* the run folder (default: `<run folder>-keys/`), written
with mode 0600 in a 0700 folder, and are loaded when they already exist; they never enter the ledger
or the report. Public keys are written into the run folder (`keys/*.pub`, raw 32 bytes as hex) for
the verifier.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from federation.errors import ConfigError

COORDINATOR = "coordinator"


def lender_name(lender: int) -> str:
    return f"lender_{lender:03d}"


def signer_label(lender: int | None) -> str:
    """How a ledger entry names its signer."""
    return COORDINATOR if lender is None else f"lender:{lender}"


def keys_dir_for(output_dir: str, keys_dir: str = "") -> Path:
    if keys_dir:
        return Path(keys_dir)
    if not output_dir:
        raise ConfigError(
            "no keys folder: the run has neither keys-dir nor output-dir (the coordinator sets output-dir)"
        )
    return Path(f"{Path(output_dir).resolve()}-keys")


def write_private(path: Path, data: bytes) -> None:
    """A new secret file, mode 0600 in a 0700 folder. Created 0600 from the start (O_EXCL): there is no
    moment when it is readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def load_or_create(folder: Path, name: str) -> Ed25519PrivateKey:
    """The private key `folder/name.key` (PEM, PKCS8), created with mode 0600 if absent."""
    path = folder / f"{name}.key"
    if path.exists():
        try:
            pem = path.read_bytes()
        except OSError as exc:  # a folder, an unreadable file: one line, never a traceback
            raise ConfigError(f"cannot read private key {path} ({exc.__class__.__name__}: {exc})") from None
        return _private_key(path, pem)
    if path.is_symlink():  # swapped for a link to nothing: not a new identity made behind the lender's back
        raise ConfigError(f"private key {path} is a link to a missing file ({os.readlink(path)})")
    key = Ed25519PrivateKey.generate()
    write_private(
        path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    return key


@lru_cache(maxsize=4096)
def _private_key(path: Path, pem: bytes) -> Ed25519PrivateKey:
    """The key these PEM bytes hold, parsed once per content (a lender reads its key file at every message it signs;
    the keys are immutable objects)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def public_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def public_from_hex(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.strip()))
    except ValueError as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from None


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return key.sign(data).hex()


def verify_signature(public: Ed25519PublicKey, signature_hex: str, data: bytes) -> bool:
    try:
        signature = bytes.fromhex(signature_hex)
        public.verify(signature, data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    # fromhex also reads upper case and spaces: only the one spelling we write is accepted, so that no byte of
    # a signed file can change and still verify.
    return signature.hex() == signature_hex
