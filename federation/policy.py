"""The data-minimization policy: the 2025 social-credit guideline, in code.

A lender applies it to its own records before anything else:
1. records without consent are dropped first;
2. only credit categories (credit history, capacity, collateral, loan terms) are used; sensitive,
   non-credit and identity columns are refused, each with its reason;
3. a card that declares a column with a prohibited name (gender, ethnicity, social media, ...) as
   credit data is a PolicyViolation, never a warning.
The result carries a manifest: fields used, fields refused and why, record counts before/after consent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from federation.card import CREDIT_CATEGORIES, PROHIBITED_CATEGORIES, DatasetCard
from federation.errors import CardError, DataError, PolicyViolation

REFUSAL_REASONS = {
    "sensitive": "sensitive personal data (guideline: never used in credit evaluation)",
    "non_credit": "non-credit data such as shopping, reading, eating or social-media habits (guideline: not credit information)",
    "identity": "identity field (not a credit feature; excessive use of personal data)",
}

# Name tokens that mark a prohibited kind of data. A column carrying one of these tokens can never be
# declared credit data in a card: that card would let prohibited data through to training.
PROHIBITED_NAME_TOKENS = {
    "sensitive": {
        "sex", "gender", "marital", "marriage", "married", "ethnic", "ethnicity", "race", "racial",
        "religion", "religious", "health", "disability", "pregnancy", "age", "birth", "dob",
        "nationality", "foreign", "political", "orientation",
    },
    "non_credit": {
        "social", "facebook", "wechat", "weibo", "twitter", "tiktok", "shopping", "reading", "books",
        "eating", "meals", "restaurant", "location", "gps", "contacts", "telephone", "phone",
    },
}


def name_tokens(name: str) -> set[str]:
    """'NumberOfDependents' -> {number, of, dependents}; 'personal_status_and_sex' -> {..., sex}."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return {t for t in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if t}


def prohibited_mark(name: str) -> tuple[str, str] | None:
    """(kind, token) when a column name marks a prohibited kind of data, else None."""
    for kind, tokens in PROHIBITED_NAME_TOKENS.items():
        hit = name_tokens(name) & tokens
        if hit:
            return kind, sorted(hit)[0]
    return None


def check_card(card: DatasetCard) -> None:
    """Refuse a card that would let a prohibited kind of column into training."""
    for col in card.columns:
        if col.category not in CREDIT_CATEGORIES:
            continue
        marked = prohibited_mark(col.name)
        if marked:
            kind, token = marked
            raise PolicyViolation(
                f"card '{card.name}' declares column '{col.name}' as {col.category}, but its name marks "
                f"{kind.replace('_', '-')} data ('{token}'); such a column must be refused, not trained on"
            )


@dataclass(frozen=True)
class PolicyResult:
    """A lender's records after the policy: only consented rows, only credit columns."""

    features: pd.DataFrame  # credit columns only
    labels: np.ndarray  # 1 = default
    records_total: int
    records_without_consent: int
    fields_used: list[dict]
    fields_refused: list[dict]

    @property
    def records_used(self) -> int:
        return self.records_total - self.records_without_consent


def check_schema(frame: pd.DataFrame, card: DatasetCard) -> None:
    """The card must describe exactly the data's columns."""
    in_data = list(frame.columns)
    undescribed = [c for c in in_data if c not in card.column_names]
    if undescribed:
        raise CardError(f"card '{card.name}' does not describe column '{undescribed[0]}' (every column needs a category)")
    absent = [c for c in card.column_names if c not in in_data]
    if absent:
        raise DataError(f"column '{absent[0]}' listed in card '{card.name}' is missing from the data")


def consent_mask(frame: pd.DataFrame, card: DatasetCard) -> np.ndarray:
    """True where the record may be used. No consent column: the card states the data are public."""
    col = card.role("consent")
    if col is None:
        return np.ones(len(frame), dtype=bool)
    values = frame[col.name]
    allowed = {str(v).lower() for v in col.consented}
    return values.astype(str).str.lower().isin(allowed).to_numpy()


def labels_of(frame: pd.DataFrame, card: DatasetCard) -> np.ndarray:
    col = card.label
    values = frame[col.name]
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(f"label column '{col.name}' has a missing value (row {row})")
    positive = col.positive
    if isinstance(positive, (int, float)) and not isinstance(positive, bool):
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.isna().any():
            bad = values[numeric.isna()].iloc[0]
            raise DataError(f"label column '{col.name}' has non-numeric value {bad!r}")
        y = (numeric.to_numpy(dtype=float) == float(positive))
    else:
        y = (values.astype(str) == str(positive)).to_numpy()
    distinct = values.nunique()
    if distinct > 2:
        raise DataError(f"label column '{col.name}' has {distinct} distinct values; a credit label is binary")
    return y.astype(np.float32)


def apply_policy(frame: pd.DataFrame, card: DatasetCard) -> PolicyResult:
    """Consent first, then keep credit columns only. `frame` holds one lender's raw records."""
    check_schema(frame, card)
    check_card(card)
    total = len(frame)
    keep = consent_mask(frame, card)
    consented = frame.loc[keep]
    used, refused = [], []
    for col in card.columns:
        if col.category in CREDIT_CATEGORIES:
            used.append({"name": col.name, "category": col.category})
        elif col.category in PROHIBITED_CATEGORIES:
            refused.append({"name": col.name, "category": col.category, "reason": col.reason or REFUSAL_REASONS[col.category]})
    features = consented[[f["name"] for f in used]]
    # Defense in depth: nothing outside the credit categories is in the training frame.
    for name in features.columns:
        if card.column(name).category not in CREDIT_CATEGORIES:
            raise PolicyViolation(f"column '{name}' ({card.column(name).category}) reached training")
    return PolicyResult(
        features=features,
        labels=labels_of(consented, card),
        records_total=total,
        records_without_consent=int(total - keep.sum()),
        fields_used=used,
        fields_refused=refused,
    )
