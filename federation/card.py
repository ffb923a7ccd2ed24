"""Dataset cards: every column of a dataset, its category, public bounds and encoding.

A card is plain data (TOML or JSON). Encoding uses only what the card states: public bounds, fixed
transforms and category lists, never statistics computed on pooled data (that would leak).

    name = "my_lender_book"
    [columns.months_on_file]
    category = "credit_history"
    type = "numeric"
    bounds = [0, 600]
    transform = "log1p"        # identity | log1p | asinh
    [columns.gender]
    category = "sensitive"
    [columns.credit_union_member]
    category = "credit_history"
    type = "numeric"
    bounds = [0, 1]
    override = "membership of a credit union (a lender), not of a trade union"
    [columns.defaulted]
    category = "label"
    positive = 1
    [columns.loan_status]               # or a label of several values: each one listed as a default or not
    category = "label"
    positive = ["Charged Off", "Default"]
    negative = ["Fully Paid"]
    [columns.recoveries]
    category = "leaks_outcome"          # known only after the outcome: refused, with its reason

A column may carry `review = "what to check"` (`fedcredit card init` writes one wherever it guessed from the data,
e.g. bounds that are the file's own minimum and maximum): such a card is refused until every review line is
deleted, because a card's bounds are signed as public, and bounds read from the records are a statistic of them.
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from federation.errors import CardError

# Categories the policy may use for training (the guideline's credit information).
CREDIT_CATEGORIES = ("credit_history", "capacity", "collateral", "loan_terms")
# Categories that never reach training: the guideline bans sensitive and non-credit data, identity fields are
# not features, and a column known only after the credit decision (the decision itself, repayments and
# recoveries after origination) leaks the outcome into the model.
PROHIBITED_CATEGORIES = ("sensitive", "non_credit", "identity", "leaks_outcome")
# Columns with a role other than feature.
ROLE_CATEGORIES = ("label", "consent", "lender", "record_id")
CATEGORIES = CREDIT_CATEGORIES + PROHIBITED_CATEGORIES + ROLE_CATEGORIES

TRANSFORMS = ("identity", "log1p", "asinh")
CARDS_DIR = Path(__file__).parent / "cards"


@dataclass(frozen=True)
class Column:
    """One column of a dataset as its card describes it."""

    name: str
    category: str
    type: str = "numeric"  # numeric | categorical (features only)
    bounds: tuple[float, float] | None = None
    transform: str = "identity"
    affine: tuple[float, float] | None = None  # raw = value * scale + offset, given as [offset, scale]
    # decimal places kept after the affine: a published z-score printed to 6 decimals gives the raw value only to
    # scale * 5e-7, so a count of 0 comes back as -0.0000013; rounding to what the file can carry gives it back exact
    decimals: int | None = None
    bins: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    missing: str = "error"  # error | indicator (numeric) | unknown (categorical)
    positive: Any = None  # label only: the value that means default, or a tuple of the values that do
    negative: tuple[Any, ...] = ()  # label only: the values that mean no default (then every value is one or other)
    consented: tuple[Any, ...] = ()  # consent only: values that mean consent given
    reason: str = ""
    # credit columns only: the written reason a lexicon-marked name is credit data all the same
    # (e.g. 'credit_union_member'); federation.policy checks the name is marked, the manifest records it
    override: str = ""

    @property
    def positives(self) -> tuple[Any, ...]:
        """The label values that mean default (one or several)."""
        return self.positive if isinstance(self.positive, tuple) else (self.positive,)

    @property
    def is_feature_candidate(self) -> bool:
        return self.category not in ROLE_CATEGORIES

    def feature_names(self) -> list[str]:
        """Names of the encoded features this column produces."""
        if self.type == "categorical":
            names = [f"{self.name}={c}" for c in self.categories]
        elif self.bins:
            edges = ("-inf", *tuple(_fmt(b) for b in self.bins), "inf")
            names = [f"{self.name}[{lo},{hi})" for lo, hi in itertools.pairwise(edges)]
        else:
            names = [self.name]
        if self.type == "numeric" and self.missing == "indicator":
            names.append(f"{self.name}__missing")
        return names


@dataclass(frozen=True)
class DatasetCard:
    name: str
    columns: tuple[Column, ...]
    description: str = ""
    source: str = ""
    path: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise CardError(f"card '{self.name}' has no column '{name}'")

    def role(self, category: str) -> Column | None:
        found = [c for c in self.columns if c.category == category]
        return found[0] if found else None

    @property
    def label(self) -> Column:
        col = self.role("label")
        assert col is not None  # guaranteed by parse_card
        return col

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _fmt(x: float) -> str:
    return f"{x:g}"


def load_card(path: str | Path) -> DatasetCard:
    """Read a card from a TOML or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise CardError(f"dataset card not found: {path}")
    text = path.read_bytes()
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            raw = tomllib.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CardError(
            f"dataset card {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}"
        ) from None
    return parse_card(raw, source_path=str(path))


@lru_cache(maxsize=64)
def builtin_card(name: str) -> DatasetCard:
    """One of the cards shipped with fedcredit (federation/cards/NAME.toml), read once a process (a card is
    frozen; each of 1,000 synthetic lenders asked for it again)."""
    return load_card(CARDS_DIR / f"{name}.toml")


def parse_card(raw: dict, source_path: str = "") -> DatasetCard:
    where = source_path or "card"
    if not isinstance(raw, dict) or not isinstance(raw.get("columns"), dict) or not raw["columns"]:
        raise CardError(f"{where}: a card needs a [columns] table with one entry per column")
    # A skeleton's guesses (fedcredit card init) are refused before anything else is read from them.
    review = [name for name, spec in raw["columns"].items() if isinstance(spec, dict) and "review" in spec]
    if review:
        first = " ".join(str(raw["columns"][review[0]]["review"]).split())
        raise CardError(
            f"{where}: {len(review)} column(s) still marked for review (first: '{review[0]}': {first}); "
            "check each and delete its review line"
        )
    columns = []
    for name, spec in raw["columns"].items():
        if not isinstance(spec, dict):
            raise CardError(f"{where}: column '{name}' must be a table")
        columns.append(_parse_column(where, name, spec))
    card = DatasetCard(
        name=str(raw.get("name", Path(source_path).stem or "card")),
        columns=tuple(columns),
        description=str(raw.get("description", "")),
        source=str(raw.get("source", "")),
        path=source_path,
    )
    labels = [c for c in columns if c.category == "label"]
    if len(labels) != 1:
        raise CardError(f"{where}: exactly one column must have category 'label', found {len(labels)}")
    if labels[0].positive is None:
        raise CardError(f"{where}: label column '{labels[0].name}' needs 'positive' (the value meaning default)")
    for role in ("consent", "lender"):
        if sum(c.category == role for c in columns) > 1:
            raise CardError(f"{where}: at most one column may have category '{role}'")
    consent = card.role("consent")
    if consent is not None and not consent.consented:
        raise CardError(
            f"{where}: consent column '{consent.name}' needs 'consented' (the values meaning consent given)"
        )
    return card


_KNOWN_KEYS = {
    "category",
    "type",
    "bounds",
    "transform",
    "affine",
    "decimals",
    "bins",
    "categories",
    "missing",
    "positive",
    "consented",
    "reason",
    "description",
    "override",
    "negative",
}


def _parse_override(where: str, name: str, category: str, spec: dict) -> str:
    """The column's override reason ('' without one). Whether the name needs it is the policy's call."""
    if "override" not in spec:
        return ""
    reason = spec["override"]
    if not isinstance(reason, str):
        raise CardError(f"{where}: column '{name}' has override {reason!r}; an override is a written reason (a string)")
    if not reason.strip():
        raise CardError(f"{where}: column '{name}' has an empty override; write the reason its name is credit data")
    if category not in CREDIT_CATEGORIES:
        raise CardError(
            f"{where}: column '{name}' has an override but category '{category}'; an override only "
            f"lets a credit column ({', '.join(CREDIT_CATEGORIES)}) keep a marked name"
        )
    return reason.strip()


def _label_values(where: str, name: str, key: str, value: Any) -> tuple[Any, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, (str, int, float)) for v in values):
        raise CardError(f"{where}: label column '{name}': {key} must be a value or a non-empty list of values")
    if len({str(v) for v in values}) != len(values):
        raise CardError(f"{where}: label column '{name}' lists a value twice in {key}")
    return tuple(values)


def _parse_label_values(where: str, name: str, spec: dict) -> dict[str, Any]:
    """A label's positive value(s) (default) and, optionally, its negative ones (no default)."""
    if spec.get("positive") is None:
        return {"positive": None}  # parse_card says what is missing
    positive = _label_values(where, name, "positive", spec["positive"])
    negative = _label_values(where, name, "negative", spec["negative"]) if "negative" in spec else ()
    both = sorted({str(v) for v in positive} & {str(v) for v in negative})
    if both:
        raise CardError(f"{where}: label column '{name}' lists {both[0]!r} as positive and as negative")
    return {"positive": positive if isinstance(spec["positive"], list) else positive[0], "negative": negative}


def _parse_column(where: str, name: str, spec: dict) -> Column:
    unknown = set(spec) - _KNOWN_KEYS
    if unknown:
        raise CardError(f"{where}: column '{name}' has unknown keys {sorted(unknown)}")
    category = spec.get("category")
    if category not in CATEGORIES:
        raise CardError(f"{where}: column '{name}' has category {category!r}; expected one of {', '.join(CATEGORIES)}")
    kind = spec.get("type", "numeric")
    col_kwargs: dict[str, Any] = {
        "name": name,
        "category": category,
        "reason": str(spec.get("reason", "")),
        "override": _parse_override(where, name, category, spec),
    }
    if category == "label":
        return Column(**col_kwargs, **_parse_label_values(where, name, spec))
    if category == "consent":
        consented = spec.get("consented", [])
        col_kwargs["consented"] = tuple(consented if isinstance(consented, list) else [consented])
        return Column(**col_kwargs)
    if category in ("lender", "record_id") or category in PROHIBITED_CATEGORIES:
        # Never encoded: only the category matters (refused columns need no encoding).
        return Column(**col_kwargs, type=kind)
    if kind not in ("numeric", "categorical"):
        raise CardError(f"{where}: column '{name}' has type {kind!r}; expected numeric or categorical")
    col_kwargs["type"] = kind
    missing = spec.get("missing", "error")
    if kind == "categorical":
        cats = spec.get("categories")
        if not isinstance(cats, list) or not cats:
            raise CardError(f"{where}: categorical column '{name}' needs a non-empty 'categories' list")
        if missing not in ("error", "unknown"):
            raise CardError(f"{where}: categorical column '{name}': missing must be 'error' or 'unknown'")
        return Column(**col_kwargs, categories=tuple(str(c) for c in cats), missing=missing)
    bounds = spec.get("bounds")
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)):
        raise CardError(f"{where}: numeric column '{name}' needs public 'bounds' = [low, high]")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise CardError(f"{where}: numeric column '{name}' has bounds {bounds}; need finite low < high")
    transform = spec.get("transform", "identity")
    if transform not in TRANSFORMS:
        raise CardError(
            f"{where}: column '{name}' has transform {transform!r}; expected one of {', '.join(TRANSFORMS)}"
        )
    if missing not in ("error", "indicator"):
        raise CardError(f"{where}: numeric column '{name}': missing must be 'error' or 'indicator'")
    affine = spec.get("affine")
    if affine is not None and not (isinstance(affine, list) and len(affine) == 2):
        raise CardError(f"{where}: column '{name}': affine must be [offset, scale]")
    decimals = spec.get("decimals")
    if decimals is not None and not (
        isinstance(decimals, int) and not isinstance(decimals, bool) and 0 <= decimals <= 12
    ):
        raise CardError(f"{where}: column '{name}': decimals must be a whole number from 0 to 12, got {decimals!r}")
    if decimals is not None and affine is None:
        raise CardError(f"{where}: column '{name}': decimals rounds the value after its affine; the column has none")
    bins = spec.get("bins", [])
    if bins and (not isinstance(bins, list) or sorted(bins) != bins):
        raise CardError(f"{where}: column '{name}': bins must be an increasing list of thresholds")
    return Column(
        **col_kwargs,
        bounds=(lo, hi),
        transform=transform,
        affine=(float(affine[0]), float(affine[1])) if affine else None,  # [offset, scale], checked above
        decimals=decimals,
        bins=tuple(float(b) for b in bins),
        missing=missing,
    )


def card_data(card: DatasetCard) -> dict:
    """The card as plain data (JSON), its columns in the card's order: what a model needs to encode a record the
    way its lenders did (the encodings and public bounds of the credit columns, the roles, the refused columns).
    `card_from_data` reads it back through the same checks as a card file."""
    columns = []
    for col in card.columns:
        spec: dict[str, Any] = {"name": col.name, "category": col.category}
        if col.category == "label":
            spec["positive"] = col.positive
        elif col.category == "consent":
            spec["consented"] = list(col.consented)
        elif col.category in CREDIT_CATEGORIES:
            spec["type"] = col.type
            spec["missing"] = col.missing
            if col.type == "categorical":
                spec["categories"] = list(col.categories)
            else:
                spec["bounds"] = list(col.bounds or ())
                spec["transform"] = col.transform
                if col.affine is not None:
                    spec["affine"] = list(col.affine)
                if col.decimals is not None:
                    spec["decimals"] = col.decimals
                if col.bins:
                    spec["bins"] = list(col.bins)
        if col.reason:
            spec["reason"] = col.reason
        if col.override:
            spec["override"] = col.override
        columns.append(spec)
    return {"name": card.name, "columns": columns}


def card_from_data(data: object, where: str) -> DatasetCard:
    """A card written by `card_data` (a list of columns, so that their order, which is the feature order, is kept)."""
    if not isinstance(data, dict) or not isinstance(data.get("columns"), list):
        raise CardError(f"{where}: the card must be an object with a list of columns")
    columns: dict[str, dict] = {}
    for spec in data["columns"]:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or spec["name"] in columns:
            raise CardError(f"{where}: each column of the card needs a name of its own")
        columns[spec["name"]] = {k: v for k, v in spec.items() if k != "name"}
    return parse_card({"name": data.get("name", ""), "columns": columns}, source_path=where)
