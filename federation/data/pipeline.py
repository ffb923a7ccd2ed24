"""The pipeline behind `federation.data`'s API (see the package docstring for the stages)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from federation.card import DatasetCard, builtin_card
from federation.config import RunConfig
from federation.data import partition as part
from federation.data import synthetic
from federation.data.loaders import LOADERS
from federation.encoding import Clipped, encode, encode_counting, encoding_text, feature_names
from federation.errors import DataError
from federation.lender_records import LenderData
from federation.policy import (
    apply_policy,
    check_card,
    check_labels,
    check_schema,
    consent_mask,
    label_problem,
    labels_of,
)


@dataclass(frozen=True)
class DataSummary:
    dataset: str
    card: str
    records: int
    holdout: int
    lender_records: list[int]
    features: list[str]
    card_sha256: str = ""
    # per column scaled by its bounds: the values clipped to them, over `clip_records` consented records (the whole
    # dataset's, or the lenders' for the synthetic market, which is generated lender by lender), and the warnings
    values_clipped: dict[str, Clipped] = field(default_factory=dict)
    clip_records: int = 0
    warnings: tuple[str, ...] = ()


def clip_warnings(card: DatasetCard, clipped: dict[str, Clipped], records: int) -> tuple[str, ...]:
    """One line per column that lost values to its bounds (a sentinel such as 999999 among them, often), never one
    per value."""
    return tuple(
        f"column '{name}': {clips.total:,} of {records:,} values lay outside the card's bounds "
        f"[{bounds[0]:g}, {bounds[1]:g}] and were clipped to them ({clips.below:,} below, {clips.above:,} above)"
        for name, clips in clipped.items()
        if clips.total and (bounds := card.column(name).bounds)
    )


# The data layer's warnings (values clipped to a card's bounds), one line each on stderr as "warning: ...";
# a program that wants them elsewhere configures this logger.
log = logging.getLogger("fedcredit.data")


class _Stderr(logging.Handler):
    """Writes to whatever sys.stderr is at the time (a test's capture, a redirected stream)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


if not log.handlers:
    _handler = _Stderr()
    _handler.setFormatter(logging.Formatter("warning: %(message)s"))
    log.addHandler(_handler)
    log.propagate = False  # not also through the root handler Opacus installs


def _data_key(cfg: RunConfig) -> RunConfig:
    """Only the options that change which records a lender holds (the cache key)."""
    return RunConfig(
        dataset=cfg.dataset,
        data_dir=cfg.resolved_data_dir(),
        csv_path=cfg.csv_path,
        card_path=cfg.card_path,
        records=cfg.records,
        lenders=cfg.lenders,
        partition=cfg.partition,
        alpha=cfg.alpha,
        holdout_fraction=cfg.holdout_fraction,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        dp=False,
    )


# The stat of a user's CSV and card when their records were last read, per data configuration: a card edited (or a
# file replaced) in the same process, between two runs of the Python API or of a sweep, is read again, never served
# stale from the caches below, which are keyed by the paths alone.
_STAMPS: dict[RunConfig, tuple] = {}


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None  # the loader says the file is not there
    return info.st_mtime_ns, info.st_size, info.st_ino


def forget_loaded() -> None:
    """Nothing read before is reused: the next load reads every file again. For a caller that knows the files
    changed though their times did not (a deployed lender's worker, whose records key hashes their content:
    clients/session.py), where the caches below, keyed by paths and file times, would serve the old records."""
    with _LOADED_LOCK:
        _raw.cache_clear()
        _assignment.cache_clear()
        _LOADED.clear()
        _STAMPS.clear()
        _NATURAL_HELD_OUT.clear()


def _refresh(key: RunConfig) -> None:
    """Forget what was read from a user's files when either changed since (see _STAMPS)."""
    if key.dataset != "csv":
        return
    stamp = (_stat(key.csv_path), _stat(key.card_path))
    with _LOADED_LOCK:
        if _STAMPS.get(key, stamp) != stamp:
            _raw.cache_clear()
            _assignment.cache_clear()
            _LOADED.pop(key, None)
        _STAMPS[key] = stamp


@lru_cache(maxsize=4)
def _raw(key: RunConfig) -> tuple[pd.DataFrame, DatasetCard]:
    if key.dataset == "synthetic":
        return synthetic.generate_market(key.records, key.lenders, key.seed), builtin_card("synthetic")
    frame, card = LOADERS[key.dataset](key)
    check_schema(frame, card)
    check_card(card)
    return frame, card


@lru_cache(maxsize=4)
def _assignment(key: RunConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """(rows of each lender, rows of the pooled holdout) as indices into the raw frame."""
    frame, card = _raw(key)
    labels = labels_of(frame, card)
    if key.partition == "natural":
        lender_col = card.role("lender")
        if lender_col is None:
            raise DataError(f"partition 'natural' needs a lender column; card '{card.name}' declares none")
        ids = frame[lender_col.name].to_numpy()
        lenders, held_out = [], []
        for i, lender_rows in enumerate(part.partition(labels, key.lenders, "natural", key.alpha, key.seed, ids)):
            keep, out = part.holdout_split(labels[lender_rows], key.holdout_fraction, key.seed + i)
            lenders.append(lender_rows[keep])
            held_out.append(lender_rows[out])
        return lenders, np.sort(np.concatenate(held_out))
    pool, held = part.holdout_split(labels, key.holdout_fraction, key.seed)
    parts = part.partition(labels[pool], key.lenders, key.partition, key.alpha, key.seed)
    return [pool[p] for p in parts], held


def _lender_frame(key: RunConfig, lender: int) -> tuple[pd.DataFrame, DatasetCard]:
    """A lender's raw records. Synthetic natural lenders are generated alone, not from the market."""
    if key.dataset == "synthetic" and key.partition == "natural":
        frame, card, keep, _ = _synthetic_natural(key, lender)
        return frame.iloc[keep], card
    frame, card = _raw(key)
    rows, _ = _assignment(key)
    return frame.iloc[rows[lender]], card


def _synthetic_natural(key: RunConfig, lender: int) -> tuple[pd.DataFrame, DatasetCard, np.ndarray, np.ndarray]:
    """A synthetic natural lender's records generated alone, and its (kept, held-out) rows."""
    sizes = synthetic.lender_sizes(key.records, key.lenders, key.seed)
    frame = synthetic.generate_lender(key.seed, lender, int(sizes[lender]))
    card = builtin_card("synthetic")
    keep, out = part.holdout_split(labels_of(frame, card), key.holdout_fraction, key.seed + lender)
    return frame, card, keep, out


def card_sha256(card: DatasetCard) -> str:
    """SHA-256 of the card file's bytes: which card a lender used, comparable across lenders."""
    return hashlib.sha256(Path(card.path).read_bytes()).hexdigest()


# Each lender's records, loaded and encoded once per process and data configuration: a run's validation
# (describe), the lender's manifest and every round it is sampled in reuse them (tests/test_data.py). Keyed by the
# data configuration (every option that changes which records a lender holds, `_data_key`) and then by the lender
# id, so one lender is never handed another's records; the lenders of the last few configurations are kept, all of
# a configuration's lenders together (a federation of 1,000 lenders is loaded once, not once a round).
_LOADED: OrderedDict[RunConfig, dict[int, LenderData]] = OrderedDict()
_LOADED_CONFIGS = 2
# A synthetic natural lender's held-out record count (describe), so that a second run in the same process (a sweep, a
# benchmark) whose lenders are still loaded generates none of them again; a pure function of the configuration.
_NATURAL_HELD_OUT: dict[tuple[RunConfig, int], int] = {}
_LOADED_LOCK = threading.Lock()


def load_lender(cfg: RunConfig, lender: int, canaries: tuple[np.ndarray, np.ndarray] | None = None) -> LenderData:
    """What lender `lender` holds, after its policy: consented records, credit columns, encoded.

    `canaries` (x, y): the records an auditor gave this lender to train on as well (federation.privacy.one_run_audit); they
    are added to the training split only, and the manifest's counts are of the lender's own records.

    The lender's own records are loaded once per process for the same data configuration (see _LOADED); each call
    gets its own manifest (a copy), and the arrays are shared: read them, never write to them."""
    if not 0 <= lender < cfg.lenders:
        raise DataError(f"lender {lender} does not exist (lenders are 0..{cfg.lenders - 1})")
    key = _data_key(cfg)
    _refresh(key)
    own = _own(key, lender)
    x_train, y_train = own.x_train, own.y_train
    if canaries is not None:
        cx, cy = canaries
        if cx.ndim != 2 or cx.shape[1] != x_train.shape[1] or len(cx) != len(cy):
            raise DataError(
                f"the audit canaries have shape {cx.shape}; lender {lender}'s records have {x_train.shape[1]} features"
            )
        x_train = np.concatenate([x_train, cx.astype(x_train.dtype)])
        y_train = np.concatenate([y_train, cy.astype(y_train.dtype)])
    return LenderData(lender, x_train, y_train, own.x_test, own.y_test, list(own.features), copy.deepcopy(own.manifest))


def _own(key: RunConfig, lender: int, frame: tuple[pd.DataFrame, DatasetCard] | None = None) -> LenderData:
    """Lender `lender`'s own records under the data configuration `key`, from the cache or loaded into it.
    `frame`: the lender's raw records where the caller has them already (used only if not cached)."""
    with _LOADED_LOCK:
        own = _LOADED.get(key, {}).get(lender)
        if key in _LOADED:
            _LOADED.move_to_end(key)
    if own is None:
        own = _load_own(key, lender, frame)
        with _LOADED_LOCK:
            _LOADED.setdefault(key, {})[lender] = own
            _LOADED.move_to_end(key)
            while len(_LOADED) > _LOADED_CONFIGS:
                _LOADED.popitem(last=False)
    return own


def _load_own(key: RunConfig, lender: int, frame: tuple[pd.DataFrame, DatasetCard] | None = None) -> LenderData:
    """Lender `lender`'s own records under the data configuration `key` (uncached: see load_lender)."""
    raw, card = frame or _lender_frame(key, lender)
    result = apply_policy(raw, card)
    x, clipped = encode_counting(result.features, card)
    y = result.labels
    train, test = part.train_test_rows(y, key.test_fraction, key.seed + 1000 + lender)
    names = feature_names(card, list(result.features.columns))
    manifest = {
        "lender": lender,
        "dataset": key.dataset,
        "card": card.name,
        "card_sha256": card_sha256(card),
        "consent_checked": card.role("consent") is not None,
        "records_total": result.records_total,
        "records_without_consent": result.records_without_consent,
        "records_used": result.records_used,
        "train_records": len(train),
        "test_records": len(test),
        "fields_used": result.fields_used,
        "fields_refused": result.fields_refused,
        "features": names,
        # Outside the epsilon, like the record counts: how many of its values each column lost to its bounds.
        "values_clipped": [{"name": c, "below": n.below, "above": n.above} for c, n in clipped.items()],
        # Secret to the lender: a plain hash of the records would let anyone who guesses them test membership.
        # The lender signs only a keyed commitment to it (clients/home.py).
        "records_digest": _data_hash(result.features, y),
        "encoding": encoding_text(card),
    }
    return LenderData(lender, x[train], y[train], x[test], y[test], names, manifest)


def load_holdout(cfg: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """The pooled held-out test (consented records only, policy applied): benchmarks only."""
    key = _data_key(cfg)
    if key.dataset == "synthetic" and key.partition == "natural":
        parts = []
        for lender in range(key.lenders):
            frame, card, _, out = _synthetic_natural(key, lender)
            parts.append(frame.iloc[out])
        frame = pd.concat(parts)
    else:
        raw, card = _raw(key)
        _, held = _assignment(key)
        frame = raw.iloc[held]
    result = apply_policy(frame, card)
    return encode(result.features, card), result.labels


@dataclass(frozen=True)
class LenderPart:
    """What describe needs of one lender: its training records, features, held-out count and clipped values."""

    lender: int
    train_records: int
    features: tuple[str, ...]
    held_out: int
    records_used: int
    values_clipped: tuple[tuple[str, int, int], ...]


# Lenders that describe loads: each lender's part (or the first refusal) for the given lenders, in order. The
# in-process engine's lender processes each take their own lenders (fedcredit/lender_processes.py), so that each
# lender is loaded and encoded once, in the process that keeps it for the run.
DescribeLenders = Callable[[RunConfig, list[int]], tuple[list[LenderPart], tuple[int, Exception] | None]]


def describe(cfg: RunConfig, each: DescribeLenders | None = None) -> DataSummary:
    """Validate the input as a whole (schema, card, policy, values, partition) before a run starts.

    The values of a dataset read from a file are checked on the whole file first, so that an error names the first
    bad record of the file and how many there are (not the first of whichever lender's share is loaded first). Each
    column's values clipped to the card's bounds are counted and logged, one warning line per column. `each`: where
    the lenders are loaded (describe_lenders, in this process, by default); a refusal is that of the first lender
    refused, as if they were loaded one after another."""
    key = _data_key(cfg)
    _refresh(key)
    clipped: dict[str, Clipped] = {}
    if key.dataset == "synthetic":
        sizes = synthetic.lender_sizes(key.records, key.lenders, key.seed)
        card = builtin_card("synthetic")
        total = int(sizes.sum())
        clip_records = 0
    else:
        frame, card = _raw(key)
        check_labels(frame, card)
        total = len(frame)
        whole = apply_policy(frame, card)
        clipped = encode_counting(whole.features, card)[1]
        clip_records = whole.records_used
    holdout = 0
    if not (key.dataset == "synthetic" and key.partition == "natural"):
        holdout = len(load_holdout(cfg)[1])
    parts, refused = (each or describe_lenders)(cfg, list(range(cfg.lenders)))
    if refused is not None:
        raise refused[1]
    features: tuple[str, ...] = ()
    for data in sorted(parts, key=lambda p: p.lender):
        holdout += data.held_out
        features = data.features
        if key.dataset == "synthetic":  # the lenders' records are all there is to count
            clip_records += data.records_used
            for name, below, above in data.values_clipped:
                was = clipped.get(name, Clipped(0, 0))
                clipped[name] = Clipped(was.below + below, was.above + above)
    warnings = clip_warnings(card, clipped, clip_records)
    for line in warnings:
        log.warning(line)
    return DataSummary(
        cfg.dataset,
        card.name,
        total,
        holdout,
        [p.train_records for p in sorted(parts, key=lambda p: p.lender)],
        list(features),
        card_sha256(card),
        clipped,
        clip_records,
        warnings,
    )


def describe_lenders(cfg: RunConfig, lenders: list[int]) -> tuple[list[LenderPart], tuple[int, Exception] | None]:
    """Each of `lenders` loaded (into this process's cache) and described, in order, up to the first one refused:
    its index and the error are returned with the parts before it."""
    key = _data_key(cfg)
    _refresh(key)
    natural = key.dataset == "synthetic" and key.partition == "natural"
    parts = []
    for lender in lenders:
        try:
            parts.append(_describe_lender(key, lender, natural))
        except Exception as exc:
            return parts, (lender, exc)
    return parts, None


def _describe_lender(key: RunConfig, lender: int, natural: bool) -> LenderPart:
    frame = None
    held = 0
    if natural:  # each lender generated once: its held-out records counted, its own records loaded (cached)
        cached = _NATURAL_HELD_OUT.get((key, lender))
        if cached is None:  # else _own generates the lender itself if it is not loaded, once as here
            raw, card, keep, out = _synthetic_natural(key, lender)
            # the policy's only row filter is consent (the lender's own rows go through the whole policy in _own;
            # the held-out ones, generated with them, are only counted)
            cached = int(consent_mask(raw, card)[out].sum())  # the mask of one column, not a copy of every one
            frame = (raw.iloc[keep], card)
            if len(_NATURAL_HELD_OUT) > 100_000:
                _NATURAL_HELD_OUT.clear()
            _NATURAL_HELD_OUT[(key, lender)] = cached
        held = cached
    data = _own(key, lender, frame)
    # A lender whose records hold one class declines its rounds instead (label-skewed partitions
    # produce such lenders); a lender with no records at all is an error in the input.
    if len(data.y_train) == 0:
        raise DataError(f"lender {lender} cannot train: {label_problem(data.y_train)}")
    return LenderPart(
        lender,
        len(data.y_train),
        tuple(data.features),
        held,
        data.manifest["records_used"],
        tuple((e["name"], e["below"], e["above"]) for e in data.manifest["values_clipped"]),
    )


def _data_hash(features: pd.DataFrame, labels: np.ndarray) -> str:
    """SHA-256 of the records a lender trained and tested on: a header (the row count, each column's name and dtype,
    the labels' dtype and shape), then the columns of each numpy number dtype as one matrix of that dtype's bytes, each
    other column's values as JSON of their type and text (missing as null), then the labels' bytes.

    SHA-256 over the values themselves, each in its own type: pandas' row hashes (hash_pandas_object, used before)
    are 64-bit and not collision-resistant. Nothing is converted on the way (int64 past 2**53 is not rounded to a
    float; 1, '1' and True stay apart), so two record sets share a digest only by a SHA-256 collision
    (tests/test_data.py)."""
    dtypes = list(features.dtypes)
    header = {
        "rows": len(features),
        "columns": [[repr(name), str(dtype)] for name, dtype in zip(features.columns, dtypes, strict=True)],
        "labels": [labels.dtype.str, list(labels.shape)],
    }
    digest = hashlib.sha256(json.dumps(header).encode())
    numbers: dict[np.dtype, list[int]] = {}
    others = []
    for i, dtype in enumerate(dtypes):
        if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            numbers.setdefault(dtype, []).append(i)
        else:
            others.append(i)
    for dtype, columns in numbers.items():  # in the order each dtype first occurs (the header says which is which)
        digest.update(np.ascontiguousarray(features.iloc[:, columns].to_numpy(dtype=dtype)).tobytes())
    for i in others:
        column = features.iloc[:, i]
        missing = np.flatnonzero(column.isna().to_numpy())
        if isinstance(column.dtype, pd.StringDtype):  # strings only (the header says so): each as it is
            values = column.tolist()
        else:  # anything: its type beside its text
            values = [[type(v).__name__, str(v)] for v in column.tolist()]
        for j in missing:
            values[j] = None
        digest.update(json.dumps(values).encode())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()
