"""A skeleton dataset card for a CSV (`fedcredit card init`): every column typed, for its user to review.

What it guesses, and how each guess is marked:
- each column's type from its values: numbers are numeric, text with at most MAX_CATEGORIES distinct values is
  categorical (its categories the values seen), other text is refused as identity (free text, an identifier);
- protected and non-credit names by the policy's lexicon (federation.policy.prohibited_mark): refused; names that
  suggest a value recorded after the credit decision (federation.policy.outcome_hint): refused as leaks_outcome;
  identifier-like names: record_id (unique) or identity; consent and lender columns by name;
- the label's default values from their names (a binary 0/1 label: 1).

Every guess a run would rely on (the bounds, the categories, the label's values, the consent values) carries a
`review = "..."` line, and a card with one is refused by federation.card.parse_card until each is deleted: bounds
written here are the file's own minimum and maximum, a statistic of the records (the extreme record's value, exactly)
that no epsilon covers, while a card's bounds are signed in every manifest as public. A warning would scroll past;
a refusal names the first column still to review. The refusals by name carry no review line: a wrongly refused
column is a feature lost, never a prohibited one used, and its comment says how to take it back.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from federation.card import parse_card
from federation.data.loaders import read_csv
from federation.errors import CardError
from federation.policy import name_parts, outcome_hint, prohibited_mark

MAX_CATEGORIES = 20  # a text column with more distinct values is free text or an identifier, not a category
# Label names tried when --label is not given (whole names, lower case, word parts joined by spaces).
LABEL_NAMES = (
    "default",
    "defaulted",
    "default payment next month",
    "bad",
    "bad flag",
    "label",
    "target",
    "y",
    "loan status",
    "status",
    "creditability",
    "serious dlqin 2 yrs",
)
# Words in a label's values that mean default ('Charged Off', 'Late (31-120 days)', 'bad').
DEFAULT_WORDS = ("charged off", "default", "late", "bad", "delinquent", "written off", "chargeoff", "write off")
# Words in a label's values that mean the outcome is not known yet ('Current', 'In Grace Period', 'Issued').
UNKNOWN_WORDS = ("current", "issued", "grace", "pending", "open")
CONSENTED_VALUES = ("yes", "y", "true", "1", "1.0", "consented", "given", "granted")
IDENTITY_WORDS = (
    "name",
    "email",
    "address",
    "street",
    "zip",
    "zipcode",
    "postcode",
    "postal",
    "ssn",
    "passport",
    "url",
    "ip",
)
ID_WORDS = ("id", "uuid", "key", "no", "number")  # the last word part of an identifier's name ('customer_no')
# Name parts that suggest a credit category other than credit_history (the default guess).
CATEGORY_WORDS = {
    "capacity": ("income", "salary", "earnings", "debt", "dti", "expenses", "employment", "emp"),
    "collateral": ("home", "house", "housing", "property", "asset", "assets", "collateral", "vehicle", "savings"),
    "loan_terms": ("amount", "amnt", "term", "rate", "interest", "installment", "grade", "purpose", "price", "loan"),
}
CATEGORY_LINE = (
    "# Categories: credit_history, capacity, collateral, loan_terms (used); sensitive, non_credit, identity,\n"
    "# leaks_outcome (refused); label, consent, lender, record_id (roles)."
)


@dataclass
class ColumnDraft:
    """One column of the skeleton: its card entry and the comments written above it."""

    name: str
    spec: dict[str, Any]
    comments: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Skeleton:
    path: Path
    columns: list[ColumnDraft]

    def count(self, categories: tuple[str, ...]) -> int:
        return sum(c.spec["category"] in categories for c in self.columns)

    @property
    def to_review(self) -> int:
        return sum("review" in c.spec for c in self.columns)


def _number(value: float) -> int | float:
    """A bound as the card shows it: a whole number without '.0'."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def _label_value(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value)  # read_csv's True/False: the label is compared as text
    if isinstance(value, (int, float)) or hasattr(value, "item"):
        number = float(value)
        return _number(number) if math.isfinite(number) else str(value)
    return str(value)


def _joined(name: str) -> str:
    return " ".join(name_parts(name))


def guess_label(frame: pd.DataFrame) -> str:
    for column in frame.columns:
        if _joined(str(column)) in LABEL_NAMES:
            return str(column)
    raise CardError(
        f"no column looks like the label (tried the names {', '.join(LABEL_NAMES[:8])}, ...): name it with --label COL"
    )


def _has_word(value: Any, words: tuple[str, ...]) -> bool:
    text = str(value).lower()
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def _label(series: pd.Series) -> ColumnDraft:
    counted = sorted(series.value_counts(dropna=True).items(), key=lambda vn: (-vn[1], str(vn[0])))
    values = [_label_value(v) for v, _ in counted]
    seen = ", ".join(f"{v!r} ({n:,})" for v, (_, n) in zip(values[:MAX_CATEGORIES], counted, strict=False))
    seen += f", ... ({len(values):,} values)" if len(values) > MAX_CATEGORIES else ""
    draft = ColumnDraft(str(series.name), {"category": "label"}, [f"# values seen (records): {seen}"])
    if series.isna().any():
        draft.comments.append(f"# {int(series.isna().sum()):,} records have no label: a run refuses them")
    if set(values) <= {0, 1} and len(values) == 2:
        draft.spec["positive"] = 1
        draft.spec["review"] = "positive = 1 is a guess: check that 1 means default, then delete this line"
        return draft
    bad = [v for v in values if _has_word(v, DEFAULT_WORDS)]
    if not bad and values:
        bad = [values[-1]]  # the rarest value: defaults are usually the minority
    if len(values) <= 2:
        draft.spec["positive"] = bad[0] if bad else ""
        draft.spec["review"] = f"positive = {bad[0] if bad else ''!r} is a guess: check it, then delete this line"
        return draft
    unknown = [v for v in values if v not in bad and _has_word(v, UNKNOWN_WORDS)]
    draft.spec["positive"] = bad
    draft.spec["negative"] = [v for v in values if v not in bad and v not in unknown]
    draft.comments.append(
        "# every value must be listed as positive (default) or negative (no default); a value whose outcome is not "
        "known yet\n# (a loan still 'Current') belongs in neither: leave those records out of the file first"
        + (f" (listed in neither here: {', '.join(map(repr, unknown))})" if unknown else "")
    )
    draft.spec["review"] = "the default values are a guess from their names: sort every value, then delete this line"
    return draft


def _consent(series: pd.Series) -> ColumnDraft:
    values = [str(v) for v in series.dropna().unique()]
    given = [v for v in values if v.lower() in CONSENTED_VALUES] or values[:1]
    return ColumnDraft(
        str(series.name),
        {
            "category": "consent",
            "consented": given,
            "review": "the values meaning consent given are a guess: check them, then delete this line",
        },
        [
            f"# values seen: {', '.join(map(repr, sorted(values)[:MAX_CATEGORIES]))}; records without consent are dropped"
        ],
    )


def _credit_category(name: str) -> str:
    parts = set(name_parts(name))
    for category, words in CATEGORY_WORDS.items():
        if parts & set(words):
            return category
    return "credit_history"


def _numeric(name: str, values: pd.Series) -> ColumnDraft:
    """`values`: the column as numbers, NaN where missing (infinities count as missing, as the encoding reads them)."""
    present = values.dropna()
    lo, hi = float(present.min()), float(present.max())
    comments = ["# TODO: bounds from the data; replace with a public source"]
    if lo == hi:
        comments.append(f"# constant in this file ({_number(lo)}): it cannot help a model; consider leaving it out")
        hi = lo + 1
    spec: dict[str, Any] = {"category": _credit_category(name), "type": "numeric", "bounds": [_number(lo), _number(hi)]}
    # Codes for 'unknown' (999999, 666, -1) stretch the bounds and then sit at their end; say where they may be.
    p01, p99 = float(present.quantile(0.01)), float(present.quantile(0.99))
    if hi > 0 and p99 > 0 and hi > 5 * p99:
        comments.append(
            f"# the largest value, {_number(hi)}, is far above the 99th percentile ({_number(round(p99, 6))}):"
            " a sentinel for 'unknown'? public bounds should not include it"
        )
    if lo < 0 <= p01:
        comments.append(
            f"# the smallest value, {_number(lo)}, is negative, 99% of the values are not: a code for 'unknown'?"
        )
    median = float(present.median())
    if lo >= 0 and hi > 1000 and hi > 50 * (abs(median) + 1):
        spec["transform"] = "log1p"
        comments.append("# a long right tail: log1p keeps the many small values apart (identity | log1p | asinh)")
    missing = int(values.isna().sum())
    if missing:
        spec["missing"] = "indicator"
        comments.append(f"# {missing:,} missing value(s): encoded 0 plus a missing flag")
    spec["review"] = (
        "bounds are this file's minimum and maximum (a statistic of the records, not public): replace them with "
        "public bounds, check the category, then delete this line"
    )
    return ColumnDraft(name, spec, comments)


def _categorical(name: str, series: pd.Series) -> ColumnDraft:
    values = sorted(str(v) for v in series.dropna().unique())
    spec: dict[str, Any] = {"category": _credit_category(name), "type": "categorical", "categories": values}
    comments = []
    missing = int(series.isna().sum())
    if missing:
        spec["missing"] = "unknown"
        comments.append(f"# {missing:,} missing value(s): encoded as unknown (all-zero one-hot)")
    spec["review"] = (
        "categories are the values seen in this file: check them against the field's public list of codes and the "
        "category, then delete this line"
    )
    return ColumnDraft(name, spec, comments)


def _refused(name: str, category: str, why: str) -> ColumnDraft:
    return ColumnDraft(name, {"category": category}, [f"# {why}"])


def _column(name: str, series: pd.Series, label: str, roles: set[str]) -> ColumnDraft:
    """`roles`: the one-column roles (consent, lender) given to an earlier column already."""
    parts = name_parts(name)
    if name == label:
        return _label(series)
    if ("consent" in parts or "consented" in parts) and "consent" not in roles:
        return _consent(series)
    if parts in (["lender"], ["lender", "id"]) and "lender" not in roles:
        return ColumnDraft(name, {"category": "lender"}, ["# which lender holds the record (partition 'natural')"])
    marked = prohibited_mark(name)
    if marked:
        kind, entry = marked
        return _refused(
            name,
            kind,
            f"the policy's lexicon marks '{entry}' ({kind.replace('_', '-')} data): refused. If it is credit data "
            'after all, give it a credit category and override = "<the reason>"',
        )
    hint = outcome_hint(name)
    if hint:
        return _refused(
            name,
            "leaks_outcome",
            f"the name suggests a value recorded after the credit decision ('{hint}'): refused. If it was known when "
            "the credit was applied for, give it a credit category",
        )
    distinct = series.nunique(dropna=True)
    if parts and parts[-1] in ID_WORDS and distinct == series.notna().sum() == len(series):
        return ColumnDraft(name, {"category": "record_id"}, ["# one value per record: an identifier, never a feature"])
    if set(parts) & set(IDENTITY_WORDS):
        return _refused(name, "identity", "an identifying field by its name: refused")
    numbers = pd.to_numeric(series, errors="coerce")
    if (numbers.notna() == series.notna()).all():  # every value present is a number
        finite = numbers.astype(float).where(np.isfinite(numbers.astype(float)))
        if finite.notna().any():
            return _numeric(name, finite)
    if 0 < distinct <= MAX_CATEGORIES:
        return _categorical(name, series)
    if distinct == 0:
        return _refused(name, "identity", "empty in this file: refused (nothing to learn from)")
    return _refused(
        name,
        "identity",
        f"text with {distinct:,} distinct values (free text, an identifier, a date?): refused. A date can be encoded as "
        "a number (e.g. months since) in the file first",
    )


def draft(frame: pd.DataFrame, label: str | None = None) -> list[ColumnDraft]:
    """The skeleton's columns, in the file's order."""
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        raise CardError("the CSV names a column twice; every column needs its own name")
    chosen = label if label is not None else guess_label(frame)
    if chosen not in names:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise CardError(f"--label {chosen!r}: no such column (the file has {shown})")
    columns: list[ColumnDraft] = []
    roles: set[str] = set()
    for name in names:
        columns.append(_column(name, frame[name], chosen, roles))
        roles.add(columns[-1].spec["category"])
    return columns


# ---- TOML, written by hand: the standard library reads TOML but does not write it, and the skeleton needs comments
# (tomli_w writes none). What is written is read back with tomllib and compared (write_skeleton).


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a card holds finite numbers only, not {value}")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def render(name: str, description: str, columns: list[ColumnDraft], header: list[str]) -> str:
    lines = [*header, f"name = {_toml_string(name)}", f"description = {_toml_string(description)}", ""]
    for col in columns:
        lines += [c for comment in col.comments for c in comment.splitlines()]
        lines.append(f"[columns.{_toml_key(col.name)}]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in col.spec.items()]
        lines.append("")
    return "\n".join(lines)


def write_skeleton(csv_path: str | Path, out: str | Path | None = None, label: str | None = None, force: bool = False):
    """Write the skeleton card of `csv_path` to `out` (default: the CSV's path with .toml) and return a Skeleton.

    Refuses to replace an existing file unless `force`; the card appears whole or not at all (written to a temporary
    file beside it, then linked, or renamed over the old one with `force`)."""
    csv_path = Path(csv_path)
    target = Path(out) if out is not None else csv_path.with_suffix(".toml")
    if target.exists() and not force:
        raise CardError(f"{target} exists: pass --force to replace it")
    if not target.parent.is_dir():
        raise CardError(f"cannot write {target}: no folder {target.parent}")
    frame = read_csv(csv_path, low_memory=False)
    columns = draft(frame, label)
    review = sum("review" in c.spec for c in columns)
    header = [
        f"# Dataset card for {csv_path.name}, a skeleton written by `fedcredit card init` ({len(frame):,} records,",
        f"# {len(columns)} columns). {review} guesses carry a `review` line: a run refuses the card until each is",
        "# checked and its line deleted. Bounds must be public (a regulation, the product's terms, a published range):",
        "# this file's own minimum and maximum are a statistic of its records that no epsilon covers.",
        CATEGORY_LINE,
        "",
    ]
    description = f"skeleton from {csv_path.name} ({len(frame):,} records); every column to be reviewed"
    text = render(csv_path.stem, description, columns, header)
    _check_round_trip(text, csv_path.stem, description, columns)
    _write_atomically(target, text, force)
    return Skeleton(target, columns)


def _check_round_trip(text: str, name: str, description: str, columns: list[ColumnDraft]) -> None:
    """The text says exactly what was meant (the hand-written TOML above), and, its review lines aside, is a card."""
    parsed = tomllib.loads(text)
    meant = {"name": name, "description": description, "columns": {c.name: c.spec for c in columns}}
    if parsed != meant:
        raise AssertionError("the skeleton card's TOML does not read back as written")
    reviewed = {k: {f: v for f, v in spec.items() if f != "review"} for k, spec in parsed["columns"].items()}
    parse_card({**parsed, "columns": reviewed}, source_path="the skeleton card")


def _write_atomically(target: Path, text: str, force: bool) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if force:
            os.replace(temporary, target)
        else:
            try:
                os.link(temporary, target)  # fails if the file appeared meanwhile: never replaced without --force
            except FileExistsError:
                raise CardError(f"{target} exists: pass --force to replace it") from None
            os.unlink(temporary)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
