"""Encode credit columns with the card's public bounds and transforms: no pooled statistics.

numeric: optional affine (undo a published standardization), a fixed monotone transform
(identity, log1p, asinh), then scaled to [-1, 1] by the public bounds and clipped; or one-hot by
public bin thresholds. Categorical: one-hot over the card's categories. Missing values are an
error unless the card asks for an indicator (numeric) or the all-zero "unknown" code (categorical).
"""

from __future__ import annotations

import json
from collections.abc import Callable

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


def encoding_text(card: DatasetCard) -> str:
    """How a lender encodes its records, as the JSON text its signed manifest carries: the scheme and the card as
    data (federation.card.card_data). The run's model.json is derived from it, so that the model can score a new
    applicant exactly as the lenders encoded their borrowers (federation/scoring.py)."""
    return json.dumps({"scheme": SCHEME, "card": card_data(card)}, sort_keys=True, default=str)


def encode(features: pd.DataFrame, card: DatasetCard) -> np.ndarray:
    """Encode the credit columns of `features` (in order) into a float32 matrix."""
    blocks = [_encode_column(features[name], card.column(name)) for name in features.columns]
    if not blocks:
        return np.zeros((len(features), 0), dtype=np.float32)
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _first_row(mask: np.ndarray, series: pd.Series) -> str:
    return str(series.index[int(np.flatnonzero(mask)[0])])


def _encode_column(series: pd.Series, col: Column) -> np.ndarray:
    if col.type == "categorical":
        return _encode_categorical(series, col)
    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    not_numeric = np.isnan(values) & series.notna().to_numpy()
    if not_numeric.any():
        bad = series.to_numpy()[np.flatnonzero(not_numeric)[0]]
        raise DataError(f"column '{col.name}' has non-numeric value {bad!r} (row {_first_row(not_numeric, series)})")
    missing = ~np.isfinite(values)
    if missing.any() and col.missing != "indicator":
        raise DataError(
            f"column '{col.name}' has {int(missing.sum())} NaN/missing value(s) (first at row {_first_row(missing, series)}); "
            'clean the data or set missing = "indicator" in the card'
        )
    if col.affine is not None:
        offset, scale = col.affine
        values = values * scale + offset
    if col.bins:
        codes = np.digitize(np.where(missing, col.bins[0] - 1, values), col.bins)
        out = np.eye(len(col.bins) + 1, dtype=np.float32)[codes]
        out[missing] = 0.0
    else:
        lo, hi = col.bounds  # type: ignore[misc]
        f = _TRANSFORMS[col.transform]
        t_lo, t_hi = f(np.array(lo)), f(np.array(hi))
        scaled = 2.0 * (f(np.where(missing, lo, values)) - t_lo) / (t_hi - t_lo) - 1.0
        scaled = np.clip(scaled, -1.0, 1.0)
        scaled[missing] = 0.0
        out = scaled[:, None].astype(np.float32)
    if col.missing == "indicator":
        out = np.concatenate([out, missing[:, None].astype(np.float32)], axis=1)
    return out


def _encode_categorical(series: pd.Series, col: Column) -> np.ndarray:
    missing = series.isna().to_numpy()
    if missing.any() and col.missing != "unknown":
        raise DataError(
            f"column '{col.name}' has {int(missing.sum())} missing value(s) (first at row {_first_row(missing, series)}); "
            'set missing = "unknown" in the card to encode them as unknown'
        )
    as_text = series.astype(str).to_numpy()
    codes = pd.Index(col.categories).get_indexer(as_text)  # -1 where not a card category
    unknown = (codes < 0) & ~missing
    if unknown.any():
        bad = as_text[np.flatnonzero(unknown)[0]]
        raise DataError(
            f"column '{col.name}' has value {bad!r} not among the card's categories (row {_first_row(unknown, series)})"
        )
    out = np.zeros((len(series), len(col.categories)), dtype=np.float32)
    rows = np.flatnonzero(codes >= 0)
    out[rows, codes[rows]] = 1.0
    return out
