"""The key under which a deployed lender caches its own encoded records (clients/home.py keeps the file).

In deployment Flower starts a new ClientApp process for every message, and each would read, check and encode the
lender's records again (pandas alone takes seconds to import). The lender saves them once in its own folder and
reuses them while nothing they were made from changed: the key is a hash of the lender's data keys (its policy's
[data] and its canaries), the content of every file the records are read from (the CSV and its card, or a built-in
dataset's folder) and the code that encodes them. An edited file, policy or encoder gives another key and the
records are read again; nothing is ever served from a stale cache.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import federation
from federation.audit_trail.canonical import canonical
from federation.config import RunConfig

CACHE_FORMAT = 1
# The code between a raw record and an encoded one (the built-in cards included): an upgraded lender re-reads.
_PIPELINE = ("data", "cards", "card.py", "config.py", "encoding.py", "lender_records.py", "policy.py")


def records_key(source: RunConfig, lender: int, canaries: str) -> str:
    record = source.to_record()
    record["data-dir"] = source.resolved_data_dir()
    key = {
        "format": CACHE_FORMAT,
        "lender": lender,
        "data": record,
        "files": {str(path): _content_hash(path) for path in _source_files(source)},
        "canaries": _content_hash(Path(canaries)) if canaries else "",
        "code": _pipeline_hash(),
    }
    return hashlib.sha256(canonical(key)).hexdigest()


def _source_files(source: RunConfig) -> list[Path]:
    """Every file the lender's records are read from (federation/data/loaders.py): a user's CSV and card, or
    every file in a built-in dataset's folder (named as the dataset); none for the generated synthetic market."""
    if source.dataset == "synthetic":
        return []
    if source.dataset == "csv":
        return [Path(source.csv_path), Path(source.card_path)]
    folder = Path(source.resolved_data_dir()) / source.dataset
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else [folder]


def _content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return "unreadable"  # the loader then names the problem; no records are cached under this key
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _pipeline_hash() -> str:
    root = Path(federation.__file__).parent
    digest = hashlib.sha256()
    for name in _PIPELINE:
        paths = sorted((root / name).rglob("*")) if (root / name).is_dir() else [root / name]
        for path in paths:
            if path.is_file() and path.suffix in (".py", ".toml"):
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
