"""What lenders and coordinator say to each other, and the inspector that checks every reply.

A lender's replies hold only (a) model arrays of exactly the model's parameter shapes, (b) scalar
metrics from a fixed list, and (c) its manifest, a fixed set of counts and column names. Nothing
row-shaped ever leaves a lender: `inspect_reply` refuses anything else, and the server runs it on
every reply before looking at it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, ConfigRecordValues, Message, MetricRecord, RecordDict

from federation.audit_trail.attest import BODY_KEYS, clip_count, encoding_of
from federation.config import RunConfig

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
MANIFEST = "manifest"
ATTESTATION = "attestation"  # a lender-signed ledger body: {"body": canonical JSON, "signature", "public-key"?}
MAX_ATTESTATION = 1_000_000  # characters: column names and shapes, never records
QUERY_MANIFEST = "query.manifest"
QUERY_FINAL = "query.final"  # end of the run: each lender signs its own count of its releases
SECAGG = "secagg"  # secure aggregation: keys, sealed shares and unmasking shares (fixed-size bytes, never data)
QUERY_SECAGG_KEYS = "query.secagg_keys"
QUERY_SECAGG_SHARES = "query.secagg_shares"
QUERY_SECAGG_CONFIRM = "query.secagg_confirm"  # the consistency round: each survivor signs the survivor set
QUERY_SECAGG_UNMASK = "query.secagg_unmask"
MASKED = "masked"  # the one array of a secure-aggregation training reply: the masked, encoded update
# What each secure-aggregation reply may hold: 32-byte keys, 64-byte Ed25519 signatures (raw), sealed 68-byte
# share pairs (+ nonce and tag), 34-byte shares. Nothing longer than a sealed share can pass.
SECAGG_REPLY_KEYS = {
    QUERY_SECAGG_KEYS: {"mask-key", "channel-key", "signature"},
    QUERY_SECAGG_SHARES: {"sealed"},
    QUERY_SECAGG_CONFIRM: {"signature"},
    QUERY_SECAGG_UNMASK: {"seed-shares", "key-shares"},
}
MAX_SECAGG_BYTES = 12 + 68 + 16
MAX_SECAGG_LIST = 100_000

# Scalars a lender may report, per message type. Each is one number: aggregate, never per record. Nothing
# computed on the training records leaves without noise (no training loss): what the epsilon covers is exactly
# the model update; the counts and the evaluation scores on the lender's own test split lie outside it and the
# report says so.
TRAIN_METRICS = {
    "lender-id",
    "server-round",
    "num-examples",
    "declined",
    "epsilon",
    "delta",
    "noise-multiplier",
    "sample-rate",
    "steps",
    "clip-norm",
    "epsilon-budget",
}
EVALUATE_METRICS = {"lender-id", "server-round", "num-examples", "auc", "ks", "gini", "brier", "loss"}
# The manifest: counts and column-level descriptions, bounded by the number of columns in the card.
MANIFEST_SCALARS = {
    "lender-id": int,
    "records-total": int,
    "records-without-consent": int,
    "records-used": int,
    "train-records": int,
    "test-records": int,
    "dataset": str,
    "card": str,
    "card-sha256": str,
    "consent-checked": bool,
    "data-commitment": str,
    "encoding": str,
    "policy": str,
}
MAX_POLICY = 4_000  # characters: the lender's limits as JSON, never data
MAX_ENCODING = 200_000  # characters: the card as data (column names, bounds, categories), never records
MANIFEST_LISTS = ("fields-used", "fields-refused", "features", "values-clipped")
MAX_MANIFEST_LIST = 10_000  # column names, never records


class ReplyRejected(Exception):
    """A reply broke the message contract (it is never aggregated)."""


def numpy_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """An ArrayRecord's arrays as numpy, by name."""
    return {k: array_numpy(v) for k, v in record.items()}


_NPY_V1 = b"\x93NUMPY\x01\x00"
_NPY_MAX_HEADER = 10_000  # np.lib.format's _MAX_HEADER_SIZE, what np.load(allow_pickle=False) accepts


def array_numpy(array: Array) -> np.ndarray:
    """What Flower's `Array.numpy()` returns (np.load of the array's .npy bytes, never a pickle), with the .npy
    header parsed once per distinct header: np.load parses it with ast.literal_eval at every call, a twentieth of a
    federation round's time, and a model's arrays carry the same few headers round after round. Anything but a
    plain version-1 header with as many bytes as it announces goes to Flower's own path (tests/test_model.py)."""
    data = array.data
    if array.stype == "numpy.ndarray" and data[:8] == _NPY_V1 and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        # np.load refuses a header over its 10,000 characters: such a header goes there, never into the cache
        # (1,024 crafted 64 KiB headers would otherwise hold 64 MiB of a lender's or the server's memory).
        header = _npy_header(bytes(data[:end])) if end - 10 <= _NPY_MAX_HEADER else None
        if header is not None:
            dtype, shape, fortran = header
            count = math.prod(shape)
            if len(data) - end == count * dtype.itemsize:
                flat = np.frombuffer(data, dtype=dtype, count=count, offset=end)
                return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")
    return array.numpy()


@lru_cache(maxsize=1024)
def _npy_header(head: bytes) -> tuple[np.dtype, tuple[int, ...], bool] | None:
    """(dtype, shape, Fortran order) of a version-1 .npy header, or None where np.load should judge it."""
    try:
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(io.BytesIO(head[8:]))
    except (ValueError, OSError):
        return None
    if dtype.hasobject or any(d < 0 for d in shape):  # np.load refuses these (no pickles): let it say so
        return None
    # A subarray dtype ('(2,)<f8') makes np.load build a bigger array than the header's shape, and a zero-width one
    # ('V0', 'S0', a structure of no fields) np.frombuffer cannot read: np.load alone says what either gives
    # (tests/test_redteam_cache.py compares both on forged headers).
    if dtype.subdtype is not None or dtype.itemsize == 0:
        return None
    return dtype, tuple(shape), bool(fortran)


def array_record(content: RecordDict, key: str) -> ArrayRecord:
    """The ArrayRecord `key` of a message's content; a TypeError naming it when it is another kind of record."""
    record = content[key]
    if not isinstance(record, ArrayRecord):
        raise TypeError(f"the message's '{key}' must be an ArrayRecord, not a {type(record).__name__}")
    return record


def config_record(content: RecordDict, key: str) -> ConfigRecord:
    """The ConfigRecord `key` of a message's content; a TypeError naming it when it is another kind of record."""
    record = content[key]
    if not isinstance(record, ConfigRecord):
        raise TypeError(f"the message's '{key}' must be a ConfigRecord, not a {type(record).__name__}")
    return record


def config_int(record: ConfigRecord, key: str) -> int:
    """An int (or bool) value of a ConfigRecord, as an int; a TypeError naming it when it is anything else."""
    value = record[key]
    if not isinstance(value, int):
        raise TypeError(f"'{key}' must be a whole number, not {type(value).__name__}")
    return int(value)


def config_str(record: ConfigRecord, key: str) -> str:
    """A str value of a ConfigRecord; a TypeError naming it when it is anything else."""
    value = record[key]
    if not isinstance(value, str):
        raise TypeError(f"'{key}' must be a string, not {type(value).__name__}")
    return value


def config_strs(record: ConfigRecord, key: str) -> list[str]:
    """A list of str of a ConfigRecord; a TypeError naming it when it is anything else."""
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"'{key}' must be a list of strings")
    return [str(v) for v in value]


def run_config_record(cfg: RunConfig) -> ConfigRecord:
    return ConfigRecord(cfg.to_record())


def run_config_from(record: Mapping) -> RunConfig:
    """The RunConfig inside a message's ConfigRecord (strategy keys like 'server-round' are skipped)."""
    known = _run_config_keys()
    # Each value's type is part of the key: True and 1 are equal, and one must not answer for the other; so is a
    # float's repr: -0.0 == 0.0, and the run id (the hash of the request) tells them apart.
    items = tuple(
        (k, type(v), repr(v) if isinstance(v, float) else None, v)
        for k, v in record.items()
        if k.replace("-", "_") in known
    )
    try:
        hash(items)
    except TypeError:  # a list where a setting belongs: from_record names the key and refuses it
        return RunConfig.from_record({k: v for k, _, _, v in items})
    return _run_config_of(items)


@lru_cache(maxsize=1)
def _run_config_keys() -> frozenset[str]:
    return frozenset(RunConfig.keys())


@lru_cache(maxsize=256)
def _run_config_of(items: tuple[tuple[str, type, str | None, Any], ...]) -> RunConfig:
    """Built and validated once per distinct request: every message of a run carries the same one, and a lender
    of a federation of 1,000 answered a thousand of them (RunConfig is frozen: sharing it is safe)."""
    return RunConfig.from_record({k: v for k, _, _, v in items})


def manifest_to_record(lender: int, manifest: dict) -> ConfigRecord:
    """The manifest as it travels (`manifest` holds the MANIFEST_FIELDS of federation.audit_trail.attest)."""
    record: dict[str, ConfigRecordValues] = {
        "lender-id": int(lender),
        "records-total": int(manifest["records_total"]),
        "records-without-consent": int(manifest["records_without_consent"]),
        "records-used": int(manifest["records_used"]),
        "train-records": int(manifest["train_records"]),
        "test-records": int(manifest["test_records"]),
        "dataset": str(manifest["dataset"]),
        "card": str(manifest["card"]),
        "card-sha256": str(manifest["card_sha256"]),
        "consent-checked": bool(manifest["consent_checked"]),
        "data-commitment": str(manifest["data_commitment"]),
        "encoding": str(manifest["encoding"]),
        "policy": json.dumps(manifest["policy"], sort_keys=True),
        "fields-used": [json.dumps(f, sort_keys=True) for f in manifest["fields_used"]],
        "fields-refused": [json.dumps(f, sort_keys=True) for f in manifest["fields_refused"]],
        "features": list(manifest["features"]),
        "values-clipped": [json.dumps(c, sort_keys=True) for c in manifest["values_clipped"]],
    }
    return ConfigRecord(record)


def manifest_from_record(record: ConfigRecord) -> dict:
    def field(text: str, keys: set[str]) -> dict:
        value = json.loads(text)
        if not isinstance(value, dict) or not set(value) <= keys or not all(isinstance(v, str) for v in value.values()):
            raise ValueError(f"a field description holds {sorted(value) if isinstance(value, dict) else value!r}")
        return value

    # inspect_reply checked every value's type first (MANIFEST_SCALARS, MANIFEST_LISTS); the readers say so again.
    return {
        "lender": config_int(record, "lender-id"),
        "dataset": config_str(record, "dataset"),
        "card": config_str(record, "card"),
        "card_sha256": config_str(record, "card-sha256"),
        "consent_checked": bool(record["consent-checked"]),
        "records_total": config_int(record, "records-total"),
        "records_without_consent": config_int(record, "records-without-consent"),
        "records_used": config_int(record, "records-used"),
        "train_records": config_int(record, "train-records"),
        "test_records": config_int(record, "test-records"),
        "fields_used": [field(s, {"name", "category", "override"}) for s in config_strs(record, "fields-used")],
        "fields_refused": [field(s, {"name", "category", "reason"}) for s in config_strs(record, "fields-refused")],
        "features": config_strs(record, "features"),
        "values_clipped": [clip_count(json.loads(s)) for s in config_strs(record, "values-clipped")],
        "data_commitment": config_str(record, "data-commitment"),
        "encoding": encoding_of(config_str(record, "encoding")),
        "policy": json.loads(config_str(record, "policy")),
    }


def _check_metrics(record: Mapping[str, object], allowed: set[str], where: str) -> dict[str, float]:
    """The record's metrics when each is an allowed scalar (any record kind is checked, value by value)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key not in allowed:
            raise ReplyRejected(f"{where}: metric '{key}' is not an allowed aggregate scalar")
        if isinstance(value, list) or not isinstance(value, (int, float)):
            raise ReplyRejected(f"{where}: metric '{key}' is not a scalar")
        out[key] = value
    return out


def _check_attestation(content: RecordDict, where: str) -> dict:
    record = content[ATTESTATION]
    if not isinstance(record, ConfigRecord) or not {"body", "signature"} <= set(record.keys()) <= {
        "body",
        "signature",
        "public-key",
    }:
        raise ReplyRejected(
            f"{where}: '{ATTESTATION}' must be a ConfigRecord with body, signature and optionally public-key"
        )
    text = record["body"]
    if not all(isinstance(v, str) for v in record.values()) or not isinstance(text, str) or len(text) > MAX_ATTESTATION:
        raise ReplyRejected(f"{where}: attestation fields must be short strings")
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        raise ReplyRejected(f"{where}: attestation body is not JSON") from None
    if not isinstance(body, dict) or body.get("type") not in BODY_KEYS:
        raise ReplyRejected(f"{where}: attestation body must be an object of a known type")
    if set(body) != BODY_KEYS[body["type"]]:
        raise ReplyRejected(f"{where}: a {body['type']} body holds exactly {sorted(BODY_KEYS[body['type']])}")
    return {"body": body, "signature": record["signature"], "public_key": record.get("public-key")}


def _check_secagg(content: RecordDict, allowed: set[str], where: str) -> dict:
    if set(content.keys()) != {SECAGG} or not isinstance(content[SECAGG], ConfigRecord):
        raise ReplyRejected(f"{where}: a secure-aggregation reply holds exactly one ConfigRecord '{SECAGG}'")
    record = content[SECAGG]
    if set(record.keys()) != allowed:
        raise ReplyRejected(f"{where}: holds {sorted(record.keys())}; expected {sorted(allowed)}")
    out = {}
    for key, value in record.items():
        items = value if isinstance(value, list) else [value]
        if len(items) > MAX_SECAGG_LIST or not all(isinstance(v, bytes) and len(v) <= MAX_SECAGG_BYTES for v in items):
            raise ReplyRejected(f"{where}: '{key}' must hold keys or shares (short bytes), nothing else")
        out[key] = value
    return out


def inspect_reply(msg: Message, expected_shapes: Mapping[str, tuple[int, ...]] | None = None) -> dict:
    """Check one reply against the contract and return its plain content.

    Returns {"metrics": {...}} for train/evaluate (plus "arrays" as numpy for train) or
    {"manifest": {...}} for the manifest query. Raises ReplyRejected on anything else.
    """
    kind = msg.metadata.message_type
    where = f"reply from node {msg.metadata.src_node_id} ({kind})"
    if msg.has_error():
        raise ReplyRejected(f"{where}: lender failed: {msg.error.reason}")
    content = msg.content
    attestation = _check_attestation(content, where) if ATTESTATION in content else None
    if kind == QUERY_MANIFEST:
        record = content.get(MANIFEST)
        if set(content.keys()) - {ATTESTATION} != {MANIFEST} or not isinstance(record, ConfigRecord):
            raise ReplyRejected(
                f"{where}: a manifest reply holds exactly one ConfigRecord '{MANIFEST}' and its attestation"
            )
        allowed = set(MANIFEST_SCALARS) | set(MANIFEST_LISTS)
        for key, value in record.items():
            if key not in allowed:
                raise ReplyRejected(f"{where}: manifest key '{key}' is not allowed")
            if key in MANIFEST_LISTS:
                if (
                    not isinstance(value, list)
                    or len(value) > MAX_MANIFEST_LIST
                    or not all(isinstance(v, str) for v in value)
                ):
                    raise ReplyRejected(f"{where}: manifest '{key}' must be a short list of column names")
            elif not isinstance(value, MANIFEST_SCALARS[key]):
                raise ReplyRejected(f"{where}: manifest '{key}' must be {MANIFEST_SCALARS[key].__name__}")
        missing = allowed - set(record.keys())
        if missing:
            raise ReplyRejected(f"{where}: manifest lacks '{sorted(missing)[0]}'")
        if len(config_str(record, "policy")) > MAX_POLICY:
            raise ReplyRejected(f"{where}: the manifest's policy is longer than {MAX_POLICY} characters")
        if len(config_str(record, "encoding")) > MAX_ENCODING:
            raise ReplyRejected(f"{where}: the manifest's encoding is longer than {MAX_ENCODING} characters")
        try:
            manifest = manifest_from_record(record)
        except (ValueError, TypeError) as exc:
            raise ReplyRejected(f"{where}: the manifest's fields are not field descriptions ({exc})") from None
        return {"manifest": manifest, "attestation": attestation}
    if kind == QUERY_FINAL:
        if set(content.keys()) != {ATTESTATION}:
            raise ReplyRejected(f"{where}: a final statement holds exactly its attestation")
        return {"attestation": attestation}
    if kind in SECAGG_REPLY_KEYS:
        return {"secagg": _check_secagg(content, SECAGG_REPLY_KEYS[kind], where)}
    if kind not in ("train", "evaluate"):
        raise ReplyRejected(f"{where}: unexpected message type")
    allowed_records = {METRICS, ARRAYS, ATTESTATION} if kind == "train" else {METRICS, ATTESTATION}
    if not set(content.keys()) <= allowed_records or METRICS not in content:
        raise ReplyRejected(f"{where}: holds {sorted(content.keys())}; allowed {sorted(allowed_records)}")
    metric_record = content[METRICS]
    if not isinstance(metric_record, MetricRecord):
        raise ReplyRejected(f"{where}: '{METRICS}' must be a MetricRecord")
    metrics = _check_metrics(metric_record, TRAIN_METRICS if kind == "train" else EVALUATE_METRICS, where)
    out: dict = {"metrics": metrics, "attestation": attestation}
    if kind == "train" and not metrics.get("declined"):
        array_content = content.get(ARRAYS)
        if not isinstance(array_content, ArrayRecord):
            raise ReplyRejected(f"{where}: a training reply must hold the model arrays")
        arrays = _reply_arrays(array_content, where)
        if expected_shapes is not None:
            if set(arrays) != set(expected_shapes):
                raise ReplyRejected(
                    f"{where}: arrays {sorted(arrays)} differ from the model's {sorted(expected_shapes)}"
                )
            for name, array in arrays.items():
                if tuple(array.shape) != tuple(expected_shapes[name]):
                    raise ReplyRejected(
                        f"{where}: array '{name}' has shape {array.shape}, the model's is {expected_shapes[name]}"
                    )
        for name, array in arrays.items():
            if not np.isfinite(array).all():
                raise ReplyRejected(f"{where}: array '{name}' holds NaN or infinite values")
        out["arrays"] = arrays
    return out


def _reply_arrays(record: ArrayRecord, where: str) -> dict[str, np.ndarray]:
    """A reply's arrays as numpy; ReplyRejected for what np.load refuses (truncated, pickled, a zip, empty) and for
    arrays of no numbers: an exception of another kind escaping the inspector stopped the coordinator's round."""
    try:
        arrays = numpy_arrays(record)
    except Exception as exc:  # np.load raises ValueError, EOFError, BadZipFile, ...: each is a refusal here
        raise ReplyRejected(f"{where}: its arrays are not plain .npy arrays ({type(exc).__name__}: {exc})") from None
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
            raise ReplyRejected(f"{where}: array '{name}' is not an array of numbers")
        if array.dtype.kind == "b" and (array.view(np.uint8) > 1).any():  # a bool's byte holds 7 more bits
            raise ReplyRejected(f"{where}: array '{name}' holds booleans that are neither 0 nor 1")
        if not _as_flower_writes(record[name], array):
            raise ReplyRejected(
                f"{where}: array '{name}' is not sent as Flower writes its values (np.save): it carries bytes or "
                "fields beyond them"
            )
    return arrays


def _as_flower_writes(sent: Array, array: np.ndarray) -> bool:
    """Whether `sent` is exactly what Flower's Array makes of the values it decodes to: the .npy bytes np.save writes
    and the dtype, shape and stype fields. np.load ignores bytes after the values, comments and padding in the
    header, and the Array's own dtype and shape fields; the lender's signature covers only the decoded values
    (update_hash), so anything else would be a channel from a lender to the coordinator that nothing checks."""
    written = Array(array)
    return (sent.stype, sent.dtype, list(sent.shape), bytes(sent.data)) == (
        written.stype,
        written.dtype,
        list(written.shape),
        bytes(written.data),
    )


def salvage_train_reply(msg: Message) -> dict | None:
    """What can still be read from a training reply the inspector rejected (for its arrays): the
    metrics, arrays and attestation, so the lender's release is still accounted and recorded. None
    when the reply is an error or its metrics themselves break the contract."""
    if msg.has_error() or METRICS not in msg.content:
        return None
    try:
        metrics = _check_metrics(msg.content[METRICS], TRAIN_METRICS, "salvage")
        attestation = _check_attestation(msg.content, "salvage") if ATTESTATION in msg.content else None
        # Only an ArrayRecord is read as arrays: any other record under 'arrays' (which the inspector rejected)
        # salvages no arrays, where reading it as one raised an AttributeError out of the coordinator's screening.
        array_content = msg.content.get(ARRAYS)
        arrays = _reply_arrays(array_content, "salvage") if isinstance(array_content, ArrayRecord) else {}
    except (ReplyRejected, TypeError, ValueError):
        return None
    return {"metrics": metrics, "arrays": arrays, "attestation": attestation}
