"""Encrypted checkpoints of the coordinator's state after every round (AES-GCM, cryptography).

The key is a random 256-bit key in the keys folder (mode 0600, outside the run folder); the run id is
the associated data, so a checkpoint cannot be swapped in from another run. A checkpoint holds the
global model, the round reached, the run record (events, metrics, epsilons), the position of the
ledger and the sampler's random state: what `fedcredit run --resume` needs to finish the run.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from federation.audit_trail.keys import write_private
from federation.errors import FedCreditError
from federation.runfolder import write_atomically

KEY_NAME = "checkpoint.aesgcm"
FILE_NAME = "checkpoint.enc"


class CheckpointError(FedCreditError):
    pass


def load_or_create_key(folder: Path) -> bytes:
    path = folder / KEY_NAME
    if path.exists():
        key = path.read_bytes()
        if len(key) != 32:
            raise CheckpointError(f"{path} is not a 256-bit key")
        return key
    key = AESGCM.generate_key(bit_length=256)
    write_private(path, key)
    return key


def encode_arrays(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    out = {}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        out[name] = base64.b64encode(buffer.getvalue()).decode()
    return out


def decode_arrays(encoded: dict[str, str]) -> dict[str, np.ndarray]:
    return {name: np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) for name, text in encoded.items()}


def save(folder: Path, key: bytes, run_id: str, state: dict) -> None:
    nonce = os.urandom(12)
    write_atomically(
        folder / FILE_NAME, nonce + AESGCM(key).encrypt(nonce, json.dumps(state).encode(), run_id.encode())
    )


def load(folder: Path, key: bytes, run_id: str) -> dict:
    path = folder / FILE_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint in {folder}: the run stopped before its first round ended")
    blob = path.read_bytes()
    try:
        return json.loads(AESGCM(key).decrypt(blob[:12], blob[12:], run_id.encode()))
    except InvalidTag:
        raise CheckpointError(f"{path} does not decrypt with this run's key (tampered, or from another run)") from None
