"""The key registry: the regulator's trust anchor, built from what the lenders and the coordinator publish.

A run folder carries the public keys its signers used, but a folder's own keys prove nothing: whoever wrote
the folder could have made them. The registry is held apart from any run (the regulator's file, built from
each lender's `fedcredit lender init` output and the coordinator's public key) and names, for every party,
the one Ed25519 public key that may sign for it:

    {"format": "fedcredit-key-registry/1",
     "coordinator": "<64 hex digits>",
     "lenders": {"0": "<64 hex digits>", "1": "..."}}

`fedcredit verify RUN --registry FILE` checks every signer of a run against it, and lenders that pin it (their
privacy policy names it) check the coordinator's signed rosters and the other lenders' signed
secure-aggregation keys against it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from federation.errors import ConfigError

FORMAT = "fedcredit-key-registry/1"


class RegistryError(ConfigError):
    """A registry file is missing, malformed, or does not name a party it must name."""


def fingerprint(public_hex: str) -> str:
    """A short, comparable name for a public key: SHA-256 of its 32 raw bytes, first 16 bytes, grouped."""
    digest = hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def _public_key(text: object, who: str, where: str) -> str:
    if not isinstance(text, str) or len(text) != 64 or text != text.lower():
        raise RegistryError(f"{where}: the key of {who} must be 64 lower-case hex digits")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError:
        raise RegistryError(f"{where}: the key of {who} is not an Ed25519 public key") from None
    return text


@dataclass(frozen=True)
class Registry:
    coordinator: str
    lenders: dict[int, str] = field(default_factory=dict)

    def lender_key(self, lender: int) -> str | None:
        return self.lenders.get(lender)

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "coordinator": self.coordinator,
            "lenders": {str(k): v for k, v in sorted(self.lenders.items())},
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def write(self, path: str | Path) -> None:
        from federation.runfolder import write_atomically

        write_atomically(path, self.to_json())

    def fingerprints(self) -> dict[str, str]:
        out = {"coordinator": fingerprint(self.coordinator)}
        out.update({f"lender {k}": fingerprint(v) for k, v in sorted(self.lenders.items())})
        return out


def load_registry(path: str | Path) -> Registry:
    """Read and check a registry file; any problem is one RegistryError line naming the file."""
    path = Path(path)
    where = f"key registry {path}"
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{where} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{where} is not a JSON file ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise RegistryError(f"{where} is not a fedcredit key registry (format {FORMAT})")
    if set(raw) != {"format", "coordinator", "lenders"} or not isinstance(raw["lenders"], dict):
        raise RegistryError(f"{where} must hold exactly format, coordinator and lenders")
    coordinator = _public_key(raw["coordinator"], "the coordinator", where)
    lenders: dict[int, str] = {}
    for name, key in raw["lenders"].items():
        if not (isinstance(name, str) and name.isdigit() and str(int(name)) == name):
            raise RegistryError(f"{where}: lender names are their ids (0, 1, ...), got {name!r}")
        lenders[int(name)] = _public_key(key, f"lender {name}", where)
    keys = [coordinator, *lenders.values()]
    if len(set(keys)) != len(keys):
        raise RegistryError(f"{where}: two parties share one key")
    return Registry(coordinator, lenders)
