"""Encode credit columns with the card's public bounds and transforms: no pooled statistics.

numeric: optional affine (undo a published standardization; optionally rounded to the decimals the file can
carry), a fixed monotone transform (identity, log1p, asinh), then scaled to [-1, 1] by the public bounds and
clipped; or one-hot by public bin thresholds. Categorical: one-hot over the card's categories. Missing values are an
error unless the card asks for an indicator (numeric) or the all-zero "unknown" code (categorical).

Values outside a column's bounds are clipped, and counted (`encode_counting`): a sentinel such as 999999
clipped without a word looks like a real maximum, so the lender's manifest and the run's warnings say how
many values each column lost to its bounds.

Errors name the first bad record as a data row counted from 1 (the first record after the header: line N + 1
of a CSV file with one line per record), from the frame's index, which is the record's position in the whole
dataset (a lender's subset keeps the positions of the file), and how many records are bad.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd

from federation.card import Column, DatasetCard, card_data
from federation.errors import DataError

SCHEME = "public bounds and categories from the dataset card (no pooled statistics)"

_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "log1p": lambda x: np.sign(x) * np.log1p(np.abs(x)),
    "asinh": np.arcsinh,
}


def feature_names(card: DatasetCard, columns: list[str]) -> list[str]:
    return [name for c in columns for name in card.column(c).feature_names()]


class Clipped(NamedTuple):
    """How many of a column's values lay below and above its bounds, and were clipped to them."""

    below: int
    above: int

    @property
    def total(self) -> int:
        return self.below + self.above


def encoding_text(card: DatasetCard) -> str:
    """How a lender encodes its records, as the JSON text its signed manifest carries: the scheme and the card as
    data (federation.card.card_data). The run's model.json is derived from it, so that the model can score a new
    applicant exactly as the lenders encoded their borrowers (federation/scoring.py)."""
    return json.dumps({"scheme": SCHEME, "card": card_data(card)}, sort_keys=True, default=str)


def encode(features: pd.DataFrame, card: DatasetCard) -> np.ndarray:
    """Encode the credit columns of `features` (in order) into a float32 matrix."""
    return encode_counting(features, card)[0]


def encode_counting(features: pd.DataFrame, card: DatasetCard) -> tuple[np.ndarray, dict[str, Clipped]]:
    """`encode`, and for each column scaled by its bounds (numeric, not binned) the values clipped to them."""
    blocks, clipped = [], {}
    # The numeric columns that hold numbers already are taken out of the frame together, as one float matrix: one
    # pandas call instead of two per column (pandas' per-call cost was most of a 1,000-record lender's encoding).
    columns = [card.column(name) for name in features.columns]
    numbers = [
        i
        for i, (col, dtype) in enumerate(zip(columns, features.dtypes, strict=True))
        if col.type != "categorical" and is_number_dtype(dtype)
    ]
    matrix = features.iloc[:, numbers].to_numpy(dtype=float, na_value=np.nan) if numbers else None
    taken = {i: j for j, i in enumerate(numbers)}
    for i, (name, col) in enumerate(zip(features.columns, columns, strict=True)):
        if i in taken:
            block, clips = _encode_numbers(matrix[:, taken[i]], col, features.index)  # type: ignore[index]
        else:
            block, clips = _encode_column(features.iloc[:, i], col)
        blocks.append(block)
        if clips is not None:
            clipped[name] = clips
    if not blocks:
        return np.zeros((len(features), 0), dtype=np.float32), clipped
    return np.concatenate(blocks, axis=1).astype(np.float32), clipped


def data_row(label: object) -> str:
    """A record's place for an error message: its data row counted from 1 (see the module docstring)."""
    return f"data row {int(label) + 1}" if isinstance(label, (int, np.integer)) else f"row {label!r}"


def bad_rows(mask: np.ndarray, index: pd.Index, count: bool = True) -> str:
    """'first at data row N, K rows in all' for the records `mask` marks (K = 1: 'at data row N'; `count` False:
    without the count, for a message that gives it already)."""
    rows = np.flatnonzero(mask)
    first = data_row(index[int(rows[0])])
    return f"at {first}" if len(rows) == 1 else f"first at {first}" + (f", {len(rows)} rows in all" if count else "")


def _encode_column(series: pd.Series, col: Column) -> tuple[np.ndarray, Clipped | None]:
    if col.type == "categorical":
        return _encode_categorical(series, col), None
    if is_number_dtype(series.dtype):  # nothing to parse (NaN marks a missing value); parsing took most of the time
        values = series.to_numpy(dtype=float, na_value=np.nan)
    else:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
        not_numeric = np.isnan(values) & series.notna().to_numpy()
        if not_numeric.any():
            bad = series.to_numpy()[np.flatnonzero(not_numeric)[0]]
            raise DataError(
                f"column '{col.name}' has non-numeric value {bad!r} ({bad_rows(not_numeric, series.index)})"
            )
    return _encode_numbers(values, col, series.index)


def _encode_numbers(values: np.ndarray, col: Column, index: pd.Index) -> tuple[np.ndarray, Clipped | None]:
    """A numeric column's values (floats, NaN where missing), encoded; `index` names the records in errors."""
    missing = ~np.isfinite(values)
    if missing.any() and col.missing != "indicator":
        raise DataError(
            f"column '{col.name}' has {int(missing.sum())} NaN/missing value(s) ({bad_rows(missing, index, count=False)}); "
            'clean the data or set missing = "indicator" in the card'
        )
    values = card_units(values, col)
    clipped = None
    if col.bins:
        codes = np.digitize(np.where(missing, col.bins[0] - 1, values), col.bins)
        out = np.eye(len(col.bins) + 1, dtype=np.float32)[codes]
        out[missing] = 0.0
    else:
        lo, hi = col.bounds  # type: ignore[misc]
        present = values[~missing]  # compared before the transform: it is monotone, and this is exact
        clipped = Clipped(int((present < lo).sum()), int((present > hi).sum()))
        f = _TRANSFORMS[col.transform]
        t_lo, t_hi = f(np.array(lo)), f(np.array(hi))
        scaled = 2.0 * (f(np.where(missing, lo, values)) - t_lo) / (t_hi - t_lo) - 1.0
        scaled = np.clip(scaled, -1.0, 1.0)
        scaled[missing] = 0.0
        out = scaled[:, None].astype(np.float32)
    if col.missing == "indicator":
        out = np.concatenate([out, missing[:, None].astype(np.float32)], axis=1)
    return out, clipped


def is_number_dtype(dtype: object) -> bool:
    """Integers or floats (numpy's or pandas' nullable ones): their values need no parsing."""
    return pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype)


def card_units(values: np.ndarray, col: Column) -> np.ndarray:
    """A numeric column's values in the card's units: its affine applied (undoing a published standardization) and
    rounded to its decimals; unchanged without an affine."""
    if col.affine is None:
        return values
    offset, scale = col.affine
    values = values * scale + offset
    return values if col.decimals is None else np.round(values, col.decimals)


def _encode_categorical(series: pd.Series, col: Column) -> np.ndarray:
    missing = series.isna().to_numpy()
    if missing.any() and col.missing != "unknown":
        raise DataError(
            f"column '{col.name}' has {int(missing.sum())} missing value(s) ({bad_rows(missing, series.index, count=False)}); "
            'set missing = "unknown" in the card to encode them as unknown'
        )
    # Each record's text (pandas' own), then each distinct text looked up once and spread to its records (the lookup
    # of every record's text was most of a small lender's encoding). The texts are grouped, not the values: values
    # equal as numbers may be written apart (1, 1.0, True) and are judged apart. A missing value is -1, all zeros.
    texts, distinct = pd.factorize(series.astype(str))
    position = {category: i for i, category in enumerate(col.categories)}
    codes = np.array([position.get(text, -1) for text in distinct] + [-1], dtype=np.int64)[texts]  # -1: no category
    unknown = (codes < 0) & ~missing
    if unknown.any():
        bad = distinct[texts[np.flatnonzero(unknown)[0]]]
        raise DataError(
            f"column '{col.name}' has value {bad!r} not among the card's categories ({bad_rows(unknown, series.index)})"
        )
    out = np.zeros((len(series), len(col.categories)), dtype=np.float32)
    rows = np.flatnonzero(codes >= 0)
    out[rows, codes[rows]] = 1.0
    return out
