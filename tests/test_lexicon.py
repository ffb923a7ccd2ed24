"""The lexicon of protected and non-credit names, card overrides, and the verifier's per-field check."""

import json
import re

import pandas as pd
import pytest

from federation.card import CARDS_DIR, load_card, parse_card
from federation.config import RunConfig
from federation.data import load_lender
from federation.errors import CardError, PolicyViolation
from federation.policy import apply_policy, check_card, name_parts, prohibited_mark, used_field_violation

# Written out here, not read from federation.policy.LEXICON, so that dropping an entry fails a test.
SENSITIVE = [
    "sex",
    "gender",
    "male",
    "female",
    "man",
    "woman",
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
    "religion",
    "religious",
    "caste",
    "nationality",
    "citizenship",
    "citizen",
    "immigrant",
    "foreign",
    "hukou",
    "minzu",
    "marital",
    "marriage",
    "married",
    "spouse",
    "divorced",
    "widowed",
    "age",
    "birth",
    "dob",
    "birthday",
    "pregnant",
    "pregnancy",
    "disability",
    "disabled",
    "health",
    "medical",
    "union",
    "political",
    "party affiliation",
    "orientation",
    "lgbt",
]
NON_CREDIT = [
    "social",
    "facebook",
    "wechat",
    "weibo",
    "twitter",
    "tiktok",
    "douyin",
    "instagram",
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
    "games",
    "gaming",
    "telephone",
    "phone",
]
LISTED = [(entry, "sensitive") for entry in SENSITIVE] + [(entry, "non-credit") for entry in NON_CREDIT]


def _plural(word: str) -> str | None:
    """The plain English plural of a lexicon word; None for words that are plural already."""
    irregular = {"man": "men", "woman": "women"}
    if word in irregular:
        return irregular[word]
    if word.endswith("s"):
        return None
    if word.endswith(("x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _spellings(entry: str) -> dict[str, str]:
    """Column names that carry the entry as word parts, one per naming convention."""
    words = entry.split()
    names = {
        "snake": f"applicant_{'_'.join(words)}_code",
        "camel": "applicant" + "".join(w.capitalize() for w in words) + "Code",
        "pascal": "".join(w.capitalize() for w in words),
        "upper": "_".join(words).upper(),
        "dotted": f"borrower.{'.'.join(words)}",
        "kebab": f"{'-'.join(words)}-flag",
        "digits": f"{'_'.join(words)}2",
        "acronym": "is" + "_".join(w.upper() for w in words),  # isMALE, isPHONE_MODEL
    }
    plural = _plural(words[-1])
    if plural:
        names["plural"] = "_".join([*words[:-1], plural])
    return names


CASES = [(entry, kind, style, name) for entry, kind in LISTED for style, name in _spellings(entry).items()]


def _card(columns: dict) -> dict:
    return {"name": "t", "columns": {"y": {"category": "label", "positive": 1}, **columns}}


@pytest.mark.parametrize("entry,kind,style,name", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_every_listed_name_is_refused_as_credit_data_with_its_kind(entry, kind, style, name):
    card = parse_card(_card({name: {"category": "credit_history", "bounds": [0, 1]}}))
    with pytest.raises(PolicyViolation) as err:
        check_card(card)
    message = str(err.value)
    assert "\n" not in message
    assert f"'{name}'" in message and f"{kind} data ('{entry}')" in message and "override" in message


@pytest.mark.parametrize(
    "name,parts",
    [
        ("NumberOfDependents", ["number", "of", "dependents"]),
        ("isMALE", ["is", "male"]),
        ("HTTPServerAge", ["http", "server", "age"]),
        ("PAY_AMT1", ["pay", "amt", "1"]),
        ("age2", ["age", "2"]),
        ("2ndSpouse", ["2", "nd", "spouse"]),
        (
            "NumberOfTime30-59DaysPastDueNotWorse",
            ["number", "of", "time", "30", "59", "days", "past", "due", "not", "worse"],
        ),
        ("borrower.birth-date", ["borrower", "birth", "date"]),
    ],
)
def test_name_parts_split_every_naming_convention(name, parts):
    assert name_parts(name) == parts


# Real credit columns (those of the builtin cards among them) that contain lexicon words only as
# substrings, or no lexicon word at all: they must stay usable as credit data.
CREDIT_NAMES = [
    "mortgage_balance",
    "average_utilization",
    "usage_fee",
    "NumberOfDependents",
    "months_on_file",
    "PAY_AMT1",
    "BILL_AMT1",
    "LIMIT_BAL",
    "Seniority",
    "Home",
    "Records",
    "Job",
    "Expenses",
    "Income",
    "Assets",
    "Debt",
    "Amount",
    "Price",
    "Time",
    "management_score",
    "manager_approved",
    "agency_rating",
    "whitelisted_merchant",
    "SeriousDlqin2yrs",
    "NumberOfTime30-59DaysPastDueNotWorse",
    "home_ownership",
    "credit_history",
    "loan_purpose",
    "partial_payments",
    "book_value",
    "purchase_price",
    "reunion_fee",
]


@pytest.mark.parametrize("name", CREDIT_NAMES)
def test_credit_names_are_not_marked(name):
    assert prohibited_mark(name) is None
    check_card(parse_card(_card({name: {"category": "capacity", "bounds": [0, 1]}})))


def test_multi_word_entries_need_consecutive_parts():
    assert prohibited_mark("phone_model_year") == ("non_credit", "phone model")
    assert prohibited_mark("model_of_device") is None  # 'device' and 'model' apart are no device model
    assert prohibited_mark("app_fee_usage") is None
    assert prohibited_mark("party_size") is None and prohibited_mark("affiliation_years") is None


@pytest.mark.parametrize("path", sorted(CARDS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_builtin_card_passes_and_its_marked_columns_are_all_refused(path):
    card = load_card(path)
    check_card(card)
    marked = [c for c in card.columns if prohibited_mark(c.name)]
    assert all(c.category in ("sensitive", "non_credit") for c in marked)


def test_the_builtin_prohibited_columns_are_marked_by_the_lexicon():
    names = {
        c.name for c in load_card(CARDS_DIR / "synthetic.toml").columns if c.category in ("sensitive", "non_credit")
    }
    names |= {
        "SEX",
        "MARRIAGE",
        "AGE",
        "personal_status_and_sex",
        "age_in_years",
        "foreign_worker",
        "telephone",
        "Marital",
    }
    assert [n for n in sorted(names) if prohibited_mark(n) is None] == []


# ---- overrides ---------------------------------------------------------------------------------------

UNION = {"category": "credit_history", "bounds": [0, 1], "override": "membership of a credit union, a lender"}


def test_an_override_with_a_reason_lets_a_marked_name_train_and_is_recorded():
    card = parse_card(
        _card(
            {
                "credit_union_member": UNION,
                "income": {"category": "capacity", "bounds": [0, 9]},
                "gender": {"category": "sensitive"},
            }
        )
    )
    check_card(card)
    frame = pd.DataFrame({"y": [0, 1], "credit_union_member": [1, 0], "income": [3, 4], "gender": ["f", "m"]})
    result = apply_policy(frame, card)
    assert list(result.features.columns) == ["credit_union_member", "income"]
    assert result.fields_used == [
        {
            "name": "credit_union_member",
            "category": "credit_history",
            "override": "membership of a credit union, a lender",
        },
        {"name": "income", "category": "capacity"},
    ]


def test_without_an_override_the_same_column_is_refused():
    spec = {k: v for k, v in UNION.items() if k != "override"}
    with pytest.raises(PolicyViolation, match=r"'credit_union_member'.*sensitive data \('union'\)"):
        check_card(parse_card(_card({"credit_union_member": spec})))


@pytest.mark.parametrize(
    "column,spec,message",
    [
        ("credit_union_member", {**UNION, "override": ""}, "column 'credit_union_member' has an empty override"),
        ("credit_union_member", {**UNION, "override": "  \t "}, "column 'credit_union_member' has an empty override"),
        ("credit_union_member", {**UNION, "override": True}, "has override True; an override is a written reason"),
        ("gender", {"category": "sensitive", "override": "we like it"}, "has an override but category 'sensitive'"),
        ("y2", {"category": "label", "positive": 1, "override": "x"}, "has an override but category 'label'"),
    ],
)
def test_malformed_overrides_are_card_errors(column, spec, message):
    with pytest.raises(CardError, match=re.escape(message)):
        parse_card(_card({column: spec}))


def test_an_override_on_a_name_the_lexicon_does_not_mark_is_a_card_error():
    card = parse_card(_card({"income": {"category": "capacity", "bounds": [0, 9], "override": "just in case"}}))
    with pytest.raises(CardError, match="column 'income' has an override, but its name marks no sensitive"):
        check_card(card)


def test_override_reaches_the_signed_manifest_from_a_json_card(tmp_path):
    card = _card({"credit_union_member": UNION, "income": {"category": "capacity", "bounds": [0, 100]}})
    card["columns"]["y"] = {"category": "label", "positive": 1}
    (tmp_path / "card.json").write_text(json.dumps(card))
    rows = ["y,credit_union_member,income"] + [f"{int(i % 3 == 0)},{i % 2},{i % 100}" for i in range(80)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    cfg = RunConfig(
        dataset="csv",
        csv_path=str(tmp_path / "data.csv"),
        card_path=str(tmp_path / "card.json"),
        partition="iid",
        lenders=2,
    )
    used = load_lender(cfg, 0).manifest["fields_used"]
    assert used == [
        {"name": "credit_union_member", "category": "credit_history", "override": UNION["override"]},
        {"name": "income", "category": "capacity"},
    ]


# ---- the verifier's check of a signed manifest's used fields ------------------------------------------


@pytest.mark.parametrize(
    "field,expected",
    [
        ({"name": "income", "category": "capacity"}, None),
        ({"name": "credit_union_member", "category": "credit_history", "override": "a credit union is a lender"}, None),
        (
            {"name": "isMale", "category": "credit_history"},
            "used field 'isMale' is marked as sensitive data ('male') without an override reason",
        ),
        (
            {"name": "credit_union_member", "category": "credit_history", "override": "   "},
            "used field 'credit_union_member' is marked as sensitive data ('union') without an override reason",
        ),
        (
            {"name": "phone_model", "category": "capacity", "override": None},
            "used field 'phone_model' is marked as non-credit data ('phone model') without an override reason",
        ),
        (
            {"name": "income", "category": "sensitive"},
            "field 'income' of category sensitive was used (only credit_history, capacity, collateral, loan_terms may be)",
        ),
        (
            {"name": "gender", "category": "non_credit", "override": "no"},
            "field 'gender' of category non_credit was used (only credit_history, capacity, collateral, loan_terms may be)",
        ),
    ],
)
def test_used_field_violation(field, expected):
    assert used_field_violation(field) == expected
