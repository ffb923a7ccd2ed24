"""Canonical JSON and hashes: the exact bytes that are hashed and signed.

Sorted keys, no insignificant whitespace, ASCII only, no NaN or infinity: two parties that agree on a
value agree on its bytes. Model arrays are hashed over their names, dtypes, shapes and raw bytes in
name order, so the lender and the coordinator compute the same hash of an update independently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_hash(record: Mapping[str, Any]) -> str:
    """Hash of a run configuration (RunConfig.to_record()): the run's identity in every signed body."""
    return sha256_hex(canonical(dict(record)))


def arrays_hash(arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(canonical({"name": name, "dtype": str(array.dtype), "shape": list(array.shape)}))
        digest.update(array.tobytes())
    return digest.hexdigest()


def arrays_shapes(arrays: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    return {name: list(np.asarray(array).shape) for name, array in sorted(arrays.items())}


def arrays_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))
