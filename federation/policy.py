"""The data-minimization policy: the 2025 social-credit guideline, in code.

A lender applies it to its own records before anything else:
1. records without consent are dropped first;
2. only credit categories (credit history, capacity, collateral, loan terms) are used; sensitive,
   non-credit, identity and outcome-leaking columns are refused, each with its reason;
3. a card that declares a column whose name the lexicon marks (gender, ethnicity, social media, ...) as
   credit data is a PolicyViolation, never a warning, unless the column gives a written override reason
   (e.g. 'credit_union_member'), which the lender's signed manifest then records.
The result carries a manifest: fields used, fields refused and why, record counts before/after consent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from federation.card import CREDIT_CATEGORIES, PROHIBITED_CATEGORIES, Column, DatasetCard
from federation.encoding import bad_rows, is_number_dtype
from federation.errors import CardError, DataError, PolicyViolation

REFUSAL_REASONS = {
    "sensitive": "sensitive personal data (guideline: never used in credit evaluation)",
    "non_credit": "non-credit data such as shopping, reading, eating or social-media habits (guideline: not credit information)",
    "identity": "identity field (not a credit feature; excessive use of personal data)",
    "leaks_outcome": "known only after the credit decision or its outcome (the decision itself, repayments or "
    "recoveries after origination): a model trained on it predicts the outcome from the outcome",
}

# The lexicon of names that mark a prohibited kind of data. A column whose name carries one of these
# entries as a word part can never be declared credit data in a card unless the card gives a written
# override reason: otherwise that card would let prohibited data through to training. Entries are
# matched on whole word parts (so 'mortgage' and 'average' do not match 'age'), also in their simple
# plurals ('females'); a multi-word entry ('phone model') matches as consecutive word parts.
LEXICON: dict[str, tuple[str, ...]] = {
    "sensitive": (
        # sex and gender
        "sex",
        "sexual",
        "sexuality",
        "gender",
        "male",
        "female",
        "man",
        "woman",
        # race, ethnicity and origin
        "race",
        "racial",
        "ethnic",
        "ethnicity",
        "black",
        "white",
        "hispanic",
        "latino",
        "latina",
        "asian",
        "native",
        "indigenous",
        "caste",
        "nationality",
        "citizenship",
        "citizen",
        "immigrant",
        "immigration",
        "foreign",
        "hukou",
        "minzu",
        # belief, affiliation and orientation
        "religion",
        "religious",
        "political",
        "party affiliation",
        "union",
        "orientation",
        "lgbt",
        "lgbtq",
        # family status
        "marital",
        "marriage",
        "married",
        "unmarried",
        "spouse",
        "divorced",
        "widowed",
        "pregnant",
        "pregnancy",
        # age
        "age",
        "birth",
        "birthday",
        "birthdate",
        "birthyear",
        "birthplace",
        "dob",
        "yob",
        # health
        "disability",
        "disabled",
        "health",
        "medical",
    ),
    "non_credit": (
        # social media and platforms
        "social",
        "facebook",
        "wechat",
        "weibo",
        "twitter",
        "tiktok",
        "douyin",
        "instagram",
        # consumption and leisure habits
        "shopping",
        "taobao",
        "jd",
        "purchases",
        "reading",
        "books",
        "eating",
        "food",
        "meals",
        "restaurant",
        "travel",
        "trips",
        "games",
        "game",
        "gaming",
        # location, device and behaviour traces
        "location",
        "gps",
        "geolocation",
        "contacts",
        "phone model",
        "device model",
        "browsing",
        "browser",
        "clicks",
        "app usage",
        "telephone",
        "phone",
    ),
}
# Names that suggest a column recorded after the credit decision (Lending Club's recoveries and total_rec_prncp,
# HMDA's action_taken and denial_reason, ...). Not enforced: whether a column leaks the outcome depends on when it
# was recorded, which no name proves ('last_payment' is history in a bureau file and outcome in a loan book). Only
# `fedcredit card init` reads them, to pre-classify a column as leaks_outcome for its user to review; a card decides.
OUTCOME_HINTS: tuple[str, ...] = (
    "action taken",
    "denial",
    "decision",
    "approved",
    "approval",
    "outcome",
    "recoveries",
    "recovery",
    "chargeoff",
    "charged off",
    "writeoff",
    "written off",
    "collection",
    "settlement",
    "hardship",
    "total rec",
    "rec prncp",
    "out prncp",
    "last pymnt",
    "next pymnt",
    "total pymnt",
    "funded amnt",
)


def outcome_hint(name: str) -> str | None:
    """The OUTCOME_HINTS entry a column name matches on consecutive word parts (plurals too), else None; the first
    matched word part wins, and at one position the longest entry."""
    parts = name_parts(name)
    entries = sorted(OUTCOME_HINTS, key=lambda e: -len(e.split()))
    for i in range(len(parts)):
        for entry in entries:
            words = entry.split()
            if len(words) <= len(parts) - i and all(parts[i + k] in _word_forms(w) for k, w in enumerate(words)):
                return entry
    return None


# Irregular plurals of lexicon words (regular ones are derived: -s, -es, -y -> -ies).
_IRREGULAR_PLURALS = {"man": ("men",), "woman": ("women",)}


def _word_forms(word: str) -> set[str]:
    """A lexicon word and its simple plurals."""
    forms = {word, word + "s", word + "es", *_IRREGULAR_PLURALS.get(word, ())}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    return forms


def _forms_index() -> dict[str, set[str]]:
    """Word form -> the lexicon words it is a form of ('games' is 'games' itself and a plural of 'game')."""
    index: dict[str, set[str]] = {}
    for entries in LEXICON.values():
        for word in {w for entry in entries for w in entry.split()}:
            for form in _word_forms(word):
                index.setdefault(form, set()).add(word)
    return index


_FORMS = _forms_index()
# each entry as its words, longest first, so that 'phone model' wins over 'phone' at one position
_ENTRIES = sorted(
    ((kind, entry, tuple(entry.split())) for kind, entries in LEXICON.items() for entry in entries),
    key=lambda e: -len(e[2]),
)


def name_parts(name: str) -> list[str]:
    """The word parts of a column name, lower-case, in order.

    snake_case, kebab-case, dotted.names, camelCase/PascalCase and acronyms are split, and digits are
    split from letters: 'NumberOfDependents' -> [number, of, dependents], 'isMALE' -> [is, male],
    'HTTPServer' -> [http, server], 'PAY_AMT1' -> [pay, amt, 1], 'age2' -> [age, 2].
    """
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", spaced)
    spaced = re.sub(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])", " ", spaced)
    return [p for p in re.split(r"[\W_]+", spaced.lower()) if p]


@lru_cache(maxsize=4096)
def prohibited_mark(name: str) -> tuple[str, str] | None:
    """(kind, lexicon entry) when a column name marks a prohibited kind of data, else None.

    The first marked word part wins; at one position the longest entry ('phone model' over 'phone').
    A pure function of the name and the fixed lexicon, remembered: each lender's policy checks its card's
    names again (1,000 lenders, 13 names each, were a fifth of a run's setup).
    """
    words = [_FORMS.get(p, set()) for p in name_parts(name)]
    for i in range(len(words)):
        for kind, entry, parts in _ENTRIES:
            if len(parts) <= len(words) - i and all(w in words[i + k] for k, w in enumerate(parts)):
                return kind, entry
    return None


def _kind_words(kind: str) -> str:
    return kind.replace("_", "-")


def check_card(card: DatasetCard) -> None:
    """Refuse a card that would let a prohibited kind of column into training.

    A credit column with a lexicon-marked name needs an override reason; an override on a name the
    lexicon does not mark is refused too, so that every override in a signed manifest was needed.
    """
    for col in card.columns:
        if col.category not in CREDIT_CATEGORIES:
            continue
        marked = prohibited_mark(col.name)
        if marked and not col.override:
            kind, token = marked
            raise PolicyViolation(
                f"card '{card.name}' declares column '{col.name}' as {col.category}, but its name marks "
                f"{_kind_words(kind)} data ('{token}'); such a column must be refused, not trained on "
                f'(if it truly is credit data, give it override = "<reason>")'
            )
        if col.override and not marked:
            raise CardError(
                f"card '{card.name}': column '{col.name}' has an override, but its name marks no sensitive or "
                f"non-credit data; remove the override (only a lexicon-marked name needs one)"
            )


def used_field_violation(field: dict) -> str | None:
    """Why a field a lender's signed manifest lists as used breaks the policy, or None when it does not.

    `field` is a `fields_used` entry: {"name", "category"} and, for an overridden name, "override".
    """
    name, category = field.get("name"), field.get("category")
    if category not in CREDIT_CATEGORIES:
        return f"field '{name}' of category {category} was used (only {', '.join(CREDIT_CATEGORIES)} may be)"
    marked = prohibited_mark(str(name))
    override = field.get("override")
    if marked and not (isinstance(override, str) and override.strip()):
        kind, token = marked
        return f"used field '{name}' is marked as {_kind_words(kind)} data ('{token}') without an override reason"
    return None


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
        raise CardError(
            f"card '{card.name}' does not describe column '{undescribed[0]}' (every column needs a category)"
        )
    absent = [c for c in card.column_names if c not in in_data]
    if absent:
        raise DataError(f"column '{absent[0]}' listed in card '{card.name}' is missing from the data")


def consent_mask(frame: pd.DataFrame, card: DatasetCard) -> np.ndarray:
    """True where the record may be used. No consent column: nothing to check, every record passes (the manifest
    says `consent_checked` false and the report says consent was not checked)."""
    col = card.role("consent")
    if col is None:
        return np.ones(len(frame), dtype=bool)
    values = frame[col.name]
    allowed = {str(v).lower() for v in col.consented}
    if values.dtype == np.bool_:  # numpy bools: pandas writes them 'True' and 'False', so two answers to spread
        return np.where(values.to_numpy(), "true" in allowed, "false" in allowed)
    # Every other dtype record by record, on the text pandas writes: values equal as numbers may be written apart
    # (1, 1.0, True; 0.0 and -0.0) and must be judged apart (tests/test_cards_policy_encoding.py).
    return values.astype(str).str.lower().isin(allowed).to_numpy()


def _label_is(values: pd.Series, wanted: tuple, col_name: str) -> np.ndarray:
    """Where the label holds one of `wanted`: compared as numbers when every wanted value is a number (1 matches
    '1.0'), else as text, exactly ('Bad' is not 'bad')."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in wanted):
        # Numbers already: pd.to_numeric would return them as they are, so it is skipped (it was most of the time).
        numeric = values if is_number_dtype(values.dtype) else pd.to_numeric(values, errors="coerce")
        if numeric.isna().any():
            bad = values[numeric.isna()].iloc[0]
            raise DataError(
                f"label column '{col_name}' has non-numeric value {bad!r} "
                f"({bad_rows(numeric.isna().to_numpy(), values.index)}); the card's label values are numbers"
            )
        return numeric.isin([float(v) for v in wanted]).to_numpy()
    return values.astype(str).isin([str(v) for v in wanted]).to_numpy()


def labels_of(frame: pd.DataFrame, card: DatasetCard) -> np.ndarray:
    """1 where the label holds a positive (default) value. With a `negative` list every value must be listed as
    one or the other; without one the label must be binary."""
    col = card.label
    values = frame[col.name]
    if values.isna().any():
        missing = values.isna().to_numpy()
        raise DataError(
            f"label column '{col.name}' has {int(missing.sum())} missing value(s) ({bad_rows(missing, values.index, False)})"
        )
    y = _label_is(values, col.positives, col.name)
    if col.negative:
        unlisted = ~(y | _label_is(values, col.negative, col.name))
        if unlisted.any():
            bad = values[unlisted].iloc[0]
            raise DataError(
                f"label column '{col.name}' has value {bad!r}, listed neither as positive nor as negative in the "
                f"card ({bad_rows(unlisted, values.index)}); list it, or leave out the records whose outcome is not known"
            )
    else:
        distinct = values.nunique()
        if distinct > 2:
            raise DataError(
                f"label column '{col.name}' has {distinct} distinct values ({_values_seen(values)}); a credit label "
                "is binary: list the default values as positive = [...] and the others as negative = [...]"
            )
    return y.astype(np.float32)


def _values_seen(values: pd.Series, limit: int = 12) -> str:
    seen = sorted(pd.unique(values.dropna()).tolist(), key=str)
    shown = ", ".join(repr(v) for v in seen[:limit])
    return shown + (f", ... ({len(seen)} in all)" if len(seen) > limit else "")


def _positive_text(col: Column) -> str:
    if isinstance(col.positive, tuple) and len(col.positive) > 1:
        return f"positive values {', '.join(map(repr, col.positive))} never occur"
    return f"positive value {col.positives[0]!r} never occurs"


def check_labels(frame: pd.DataFrame, card: DatasetCard) -> None:
    """The data's labels can train a credit model: both classes occur, and so does each of the card's positive
    values, in all records and in the consented ones (the only ones used).

    Without this a one-class label trains a DP round (spending privacy budget) and only then fails
    when the run's metrics are undefined. A listed positive value that never occurs is refused too: it is most
    often a misspelling ('Charged off' for 'Charged Off'), which would turn those defaults into non-defaults.
    """
    col = card.label
    for records, where in ((frame, ""), (frame.loc[consent_mask(frame, card)], " among the consented records")):
        if records.empty:
            consent = card.role("consent")
            if consent is None:  # public data (no consent column): there are no records at all
                raise DataError("the data hold no records; nothing can train")
            raise DataError(
                f"no record has consent (column '{consent.name}' never holds "
                f"{', '.join(map(repr, consent.consented))}); nothing can train"
            )
        y = labels_of(records, card)
        values = records[col.name]
        seen = _values_seen(values)
        if not y.any() and values.nunique() > 1:
            raise DataError(
                f"the card's {_positive_text(col)} in label column '{col.name}'{where} (values seen: {seen})"
            )
        if not y.any() or y.all():
            absent = "" if y.any() else f"; the card's {_positive_text(col)}"
            raise DataError(
                f"label column '{col.name}' has one class only{where} (values seen: {seen}){absent}; "
                f"a credit model needs both defaults and non-defaults"
            )
        if not where:  # each listed value, in the whole data (a lender's share may lack a rare one)
            for value in (*col.positives, *col.negative):
                if not _label_is(values, (value,), col.name).any():
                    kind = "positive" if value in col.positives else "negative"
                    raise DataError(
                        f"the card's {kind} value {value!r} never occurs in label column '{col.name}' "
                        f"(values seen: {seen}); correct it or remove it from the card"
                    )


def label_problem(y_train: np.ndarray) -> str | None:
    """Why a lender's training split cannot train a credit model (no records, or one class only), else None.

    A lender with such a split declines the round with this reason before any privacy budget is spent.
    """
    y = np.asarray(y_train).ravel()
    if len(y) == 0:
        return "no training records (after consent and the train/test split)"
    classes = np.unique(y)
    if len(classes) < 2:
        which = "defaults" if classes[0] == 1 else "non-defaults"
        return f"training records hold one class only ({len(y)} {which}); a credit model needs both"
    return None


def apply_policy(frame: pd.DataFrame, card: DatasetCard) -> PolicyResult:
    """Consent first, then keep credit columns only. `frame` holds one lender's raw records."""
    check_schema(frame, card)
    check_card(card)
    total = len(frame)
    keep = consent_mask(frame, card)
    used, refused = [], []
    for col in card.columns:
        if col.category in CREDIT_CATEGORIES:
            field = {"name": col.name, "category": col.category}
            if col.override:
                field["override"] = col.override  # signed with the manifest: why a marked name was used
            used.append(field)
        elif col.category in PROHIBITED_CATEGORIES:
            refused.append(
                {"name": col.name, "category": col.category, "reason": col.reason or REFUSAL_REASONS[col.category]}
            )
    # The used columns and the label are taken first, then the consented rows: selecting the rows of every raw column
    # (the refused ones too) took most of a small lender's policy time (a federation of 1,000 lenders' setup).
    # By position (`take`): a selection by names builds an index of them, a third of a small lender's policy time.
    names = [f["name"] for f in used]
    taken = names if card.label.name in names else [*names, card.label.name]
    positions = frame.columns.get_indexer(taken) if frame.columns.is_unique else None
    if positions is not None and (positions < 0).any():  # check_schema refuses this first; take(-1) is the last column
        raise DataError(f"column '{taken[int(np.flatnonzero(positions < 0)[0])]}' is missing from the data")
    consented = frame.take(positions, axis=1) if positions is not None else frame[taken]
    if not keep.all():
        consented = consented.take(np.flatnonzero(keep))
    features = consented.iloc[:, : len(names)]
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
