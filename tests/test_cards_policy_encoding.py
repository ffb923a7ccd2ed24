import numpy as np
import pandas as pd
import pytest

from federation.card import builtin_card, parse_card
from federation.data.synthetic import generate_lender
from federation.encoding import encode, feature_names
from federation.errors import CardError, DataError, PolicyViolation
from federation.policy import apply_policy, check_card

BUILTIN = [
    "synthetic",
    "taiwan_default",
    "taiwan_default_fate",
    "give_me_some_credit",
    "give_me_some_credit_fate",
    "german_credit",
    "spanish_credit",
]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_cards_parse_and_pass_the_policy(name):
    card = builtin_card(name)
    check_card(card)
    assert card.label.positive is not None


def test_synthetic_policy_refuses_forbidden_fields_and_drops_no_consent_first():
    frame = generate_lender(seed=3, lender=0, n=2000)
    card = builtin_card("synthetic")
    result = apply_policy(frame, card)
    refused = {f["name"]: f["category"] for f in result.fields_refused}
    assert refused == {
        "age": "sensitive",
        "gender": "sensitive",
        "ethnicity": "sensitive",
        "marital_status": "sensitive",
        "social_media_hours_per_day": "non_credit",
        "online_shopping_orders_per_month": "non_credit",
        "books_read_per_year": "non_credit",
        "meals_out_per_week": "non_credit",
    }
    assert all(f["reason"] for f in result.fields_refused)
    assert not set(refused) & set(result.features.columns)
    assert {"borrower_id", "lender_id", "consent", "defaulted"}.isdisjoint(result.features.columns)
    no_consent = int((~frame["consent"]).sum())
    assert no_consent > 0
    assert result.records_without_consent == no_consent
    assert len(result.features) == len(result.labels) == 2000 - no_consent
    # the consented rows are exactly the ones kept
    assert result.features.index.equals(frame.index[frame["consent"].to_numpy()])


def _card(columns: dict) -> dict:
    return {"name": "t", "columns": {"y": {"category": "label", "positive": 1}, **columns}}


@pytest.mark.parametrize(
    "column", ["gender", "MaritalStatus", "social_media_score", "age", "ethnicity_code", "telephone"]
)
def test_card_declaring_a_prohibited_column_as_credit_data_is_an_error(column):
    card = parse_card(_card({column: {"category": "credit_history", "bounds": [0, 1]}}))
    with pytest.raises(PolicyViolation, match=column):
        check_card(card)


def test_names_that_merely_contain_age_are_not_refused():
    check_card(
        parse_card(
            _card(
                {
                    "mortgage_balance": {"category": "collateral", "bounds": [0, 1]},
                    "average_utilization": {"category": "credit_history", "bounds": [0, 1]},
                }
            )
        )
    )


def test_card_must_describe_every_column():
    card = parse_card(_card({"income": {"category": "capacity", "bounds": [0, 10]}}))
    frame = pd.DataFrame({"y": [0, 1], "income": [1, 2], "surprise": [3, 4]})
    with pytest.raises(CardError, match="does not describe column 'surprise'"):
        apply_policy(frame, card)


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"x": {"category": "hobby"}}, "category 'hobby'"),
        ({"x": {"category": "capacity"}}, "bounds"),
        ({"x": {"category": "capacity", "bounds": [5, 1]}}, "low < high"),
        ({"x": {"category": "capacity", "type": "categorical"}}, "categories"),
        ({"x": {"category": "capacity", "bounds": [0, 1], "decimals": 2}}, "the column has none"),
        ({"x": {"category": "capacity", "bounds": [0, 1], "affine": [0, 1], "decimals": "2"}}, "whole number"),
        ({"x": {"category": "capacity", "bounds": [0, 1], "affine": [0, 1], "decimals": -1}}, "whole number"),
        ({"x": {"category": "capacity", "bounds": [0, 1], "affine": [0, 1], "decimals": True}}, "whole number"),
    ],
)
def test_malformed_cards_are_rejected(bad, message):
    with pytest.raises(CardError, match=message):
        parse_card(_card(bad))


def test_encoding_uses_public_bounds_only():
    card = parse_card(
        _card(
            {
                "income": {"category": "capacity", "bounds": [0, 100]},
                "debt": {"category": "capacity", "bounds": [0, 1000], "transform": "log1p", "missing": "indicator"},
                "dpd": {"category": "credit_history", "bounds": [0, 180], "bins": [1, 30, 90]},
                "home": {
                    "category": "collateral",
                    "type": "categorical",
                    "categories": ["own", "rent"],
                    "missing": "unknown",
                },
            }
        )
    )
    frame = pd.DataFrame(
        {
            "income": [0, 50, 100, 400],
            "debt": [0, np.nan, 1000, 10],
            "dpd": [0, 15, 45, 120],
            "home": ["own", "rent", None, "own"],
        }
    )
    x = encode(frame, card)
    names = feature_names(card, list(frame.columns))
    assert names == [
        "income",
        "debt",
        "debt__missing",
        "dpd[-inf,1)",
        "dpd[1,30)",
        "dpd[30,90)",
        "dpd[90,inf)",
        "home=own",
        "home=rent",
    ]
    assert x.shape == (4, len(names))
    np.testing.assert_allclose(x[:, 0], [-1, 0, 1, 1])  # scaled by bounds, clipped above
    np.testing.assert_allclose(x[:, 1], [-1, 0, 1, 2 * np.log1p(10) / np.log1p(1000) - 1], rtol=1e-6)
    np.testing.assert_allclose(x[:, 2], [0, 1, 0, 0])
    np.testing.assert_allclose(x[:, 3:7], np.eye(4))
    np.testing.assert_allclose(x[:, 7:], [[1, 0], [0, 1], [0, 0], [1, 0]])
    # the same row encodes the same way whatever else is in the batch: no pooled statistics
    np.testing.assert_allclose(encode(frame.iloc[[2]], card), x[[2]])


def test_nan_in_numeric_column_is_an_error_naming_the_column():
    card = parse_card(_card({"income": {"category": "capacity", "bounds": [0, 100]}}))
    with pytest.raises(DataError, match="column 'income' has 1 NaN"):
        encode(pd.DataFrame({"income": [1.0, np.nan]}), card)


def test_unknown_category_is_an_error():
    card = parse_card(_card({"home": {"category": "collateral", "type": "categorical", "categories": ["own"]}}))
    with pytest.raises(DataError, match="'castle' not among"):
        encode(pd.DataFrame({"home": ["own", "castle"]}), card)


# ---- labels with several positive values -------------------------------------------------------------------------

LOAN_STATUS = {
    "category": "label",
    "positive": ["Charged Off", "Default", "Late (31-120 days)"],
    "negative": ["Fully Paid"],
}


def test_several_positive_values_each_mean_default():
    from federation.policy import labels_of

    card = parse_card({"name": "lc", "columns": {"loan_status": LOAN_STATUS}})
    assert card.label.positives == ("Charged Off", "Default", "Late (31-120 days)")
    frame = pd.DataFrame({"loan_status": ["Fully Paid", "Charged Off", "Default", "Late (31-120 days)", "Fully Paid"]})
    np.testing.assert_array_equal(labels_of(frame, card), [0, 1, 1, 1, 0])
    # numbers too: 2 and 3 are defaults, 0 and 1 are not (compared as numbers: '3.0' is 3)
    numeric = parse_card({"name": "n", "columns": {"y": {"category": "label", "positive": [2, 3], "negative": [0, 1]}}})
    np.testing.assert_array_equal(labels_of(pd.DataFrame({"y": ["0", "3.0", "1", "2"]}), numeric), [0, 1, 0, 1])


def test_a_label_value_listed_neither_positive_nor_negative_is_an_error_naming_its_first_row():
    from federation.policy import labels_of

    card = parse_card({"name": "lc", "columns": {"loan_status": LOAN_STATUS}})
    # a lender's share of the file: its index is the records' places in the file (data rows 4, 8, 13, 21)
    frame = pd.DataFrame({"loan_status": ["Fully Paid", "Current", "Default", "Current"]}, index=[3, 7, 12, 20])
    with pytest.raises(DataError) as err:
        labels_of(frame, card)
    assert str(err.value) == (
        "label column 'loan_status' has value 'Current', listed neither as positive nor as negative in the card "
        "(first at data row 8, 2 rows in all); list it, or leave out the records whose outcome is not known"
    )


def test_a_label_of_more_than_two_values_needs_the_negative_list():
    from federation.policy import labels_of

    card = parse_card({"name": "lc", "columns": {"s": {"category": "label", "positive": ["Charged Off", "Default"]}}})
    with pytest.raises(DataError, match=r"has 3 distinct values \('Charged Off', 'Current', 'Default'\); .* negative"):
        labels_of(pd.DataFrame({"s": ["Charged Off", "Current", "Default"]}), card)


@pytest.mark.parametrize(
    "label,message",
    [
        (
            {"positive": ["Default"], "negative": ["Default", "Fully Paid"]},
            "lists 'Default' as positive and as negative",
        ),
        ({"positive": []}, "positive must be a value or a non-empty list"),
        ({"positive": ["Default", "Default"]}, "lists a value twice in positive"),
        ({"positive": [{"a": 1}]}, "positive must be a value or a non-empty list"),
    ],
)
def test_malformed_label_values_are_card_errors(label, message):
    with pytest.raises(CardError, match=message):
        parse_card({"name": "lc", "columns": {"s": {"category": "label", **label}}})


def test_a_listed_label_value_that_never_occurs_is_refused_as_a_likely_misspelling():
    from federation.policy import check_labels

    card = parse_card(
        {
            "name": "lc",
            "columns": {"s": {"category": "label", "positive": ["Charged off", "Default"], "negative": ["Fully Paid"]}},
        }
    )
    frame = pd.DataFrame({"s": ["Default", "Fully Paid", "Fully Paid", "Default"]})
    with pytest.raises(DataError) as err:
        check_labels(frame, card)
    assert str(err.value) == (
        "the card's positive value 'Charged off' never occurs in label column 's' (values seen: 'Default', "
        "'Fully Paid'); correct it or remove it from the card"
    )


# ---- outcome-leaking columns ---------------------------------------------------------------------------------------


def test_an_outcome_leaking_column_is_refused_with_its_reason():
    card = parse_card(
        _card(
            {
                "income": {"category": "capacity", "bounds": [0, 100]},
                "recoveries": {"category": "leaks_outcome"},
                "action_taken": {"category": "leaks_outcome", "reason": "HMDA: the lender's decision itself"},
            }
        )
    )
    frame = pd.DataFrame({"y": [0, 1], "income": [1, 2], "recoveries": [0.0, 250.0], "action_taken": [1, 3]})
    result = apply_policy(frame, card)
    assert list(result.features.columns) == ["income"]
    refused = {f["name"]: f for f in result.fields_refused}
    assert refused["recoveries"]["category"] == "leaks_outcome"
    assert refused["recoveries"]["reason"].startswith("known only after the credit decision or its outcome")
    assert refused["action_taken"]["reason"] == "HMDA: the lender's decision itself"


def test_an_override_cannot_make_an_outcome_leaking_column_credit_data():
    with pytest.raises(CardError, match="has an override but category 'leaks_outcome'"):
        parse_card(_card({"recoveries": {"category": "leaks_outcome", "override": "it is fine"}}))


@pytest.mark.parametrize(
    "name,hint",
    [
        ("recoveries", "recoveries"),
        ("collection_recovery_fee", "collection"),
        ("total_rec_prncp", "total rec"),
        ("last_pymnt_amnt", "last pymnt"),
        ("action_taken", "action taken"),
        ("denial_reason_1", "denial"),
        ("debt_settlement_flag", "settlement"),
        ("months_on_book", None),
        ("PAY_AMT1", None),
        ("actionable_items", None),  # whole word parts only
    ],
)
def test_outcome_hints_match_word_parts(name, hint):
    from federation.policy import outcome_hint

    assert outcome_hint(name) == hint


# ---- values clipped to the bounds, and where errors are ---------------------------------------------------------------


def test_values_clipped_to_the_bounds_are_counted_per_column():
    from federation.encoding import Clipped, encode_counting

    card = parse_card(
        _card(
            {
                "income": {"category": "capacity", "bounds": [0, 1000], "transform": "log1p", "missing": "indicator"},
                "z": {"category": "capacity", "bounds": [0, 10], "affine": [5, 2]},  # raw = 2 z + 5
                "dpd": {"category": "credit_history", "bounds": [0, 180], "bins": [30]},
                "home": {"category": "collateral", "type": "categorical", "categories": ["own", "rent"]},
            }
        )
    )
    frame = pd.DataFrame(
        {
            "income": [-5, 0, 1000, 999999.375, np.nan, 1001],
            "z": [-3, -2.5, 0, 2.5, 3, 2.4],  # raw -1, 0, 5, 10, 11, 9.8
            "dpd": [0, 500, -1, 10, 20, 30],
            "home": ["own"] * 6,
        }
    )
    x, clipped = encode_counting(frame, card)
    assert clipped == {"income": Clipped(below=1, above=2), "z": Clipped(below=1, above=1)}  # bins, categories: none
    np.testing.assert_array_equal(x, encode(frame, card))
    assert np.abs(x).max() <= 1


def test_encoding_errors_name_the_first_bad_data_row_and_how_many():
    card = parse_card(
        _card(
            {
                "income": {"category": "capacity", "bounds": [0, 100]},
                "home": {"category": "collateral", "type": "categorical", "categories": ["own"]},
            }
        )
    )
    share = pd.DataFrame({"income": ["1", "x", "2", "y"], "home": ["own"] * 4}, index=[0, 4, 9, 11])
    with pytest.raises(DataError) as err:
        encode(share, card)
    assert str(err.value) == "column 'income' has non-numeric value 'x' (first at data row 5, 2 rows in all)"
    one = pd.DataFrame({"income": [1, np.nan], "home": ["own", "own"]}, index=[0, 6])
    with pytest.raises(DataError, match=r"has 1 NaN/missing value\(s\) \(at data row 7\)"):
        encode(one, card)
    castle = pd.DataFrame({"income": [1, 2], "home": ["castle", "own"]})
    with pytest.raises(DataError, match=r"'castle' not among the card's categories \(at data row 1\)"):
        encode(castle, card)


def test_a_card_with_a_review_line_is_refused_in_every_format(tmp_path):
    from federation.card import load_card

    spec = {"name": "t", "columns": {"y": {"category": "label", "positive": 1, "review": "check it"}}}
    (tmp_path / "card.json").write_text(__import__("json").dumps(spec))
    (tmp_path / "card.toml").write_text('[columns.y]\ncategory = "label"\npositive = 1\nreview = "check it"\n')
    for path in (tmp_path / "card.json", tmp_path / "card.toml"):
        with pytest.raises(CardError, match=r"1 column\(s\) still marked for review \(first: 'y': check it\)"):
            load_card(path)


# ---- a published standardization undone: decimals, and Give Me Some Credit's FATE file -------------------------------


def test_decimals_give_back_the_exact_value_a_rounded_z_score_stands_for():
    """A count standardized with mean 0.421033 and sd 4.192781 and printed to 6 decimals: its 0 comes back from the
    affine as -1.3e-6, below the bound 0, and would be counted as clipped in every record (and 1 as 0.9999998).
    decimals = 0 gives back the whole counts, and nothing is counted as clipped."""
    from federation.card import card_data, card_from_data
    from federation.encoding import Clipped, encode_counting

    mean, sd = 0.421033, 4.192781
    z = np.round((np.array([0.0, 1.0, 2.0, 0.0]) - mean) / sd, 6)
    spec = {"category": "credit_history", "bounds": [0, 20], "transform": "log1p", "affine": [mean, sd]}
    loose = parse_card(_card({"n": spec}))
    exact = parse_card(_card({"n": {**spec, "decimals": 0}}))
    frame = pd.DataFrame({"n": z})
    assert encode_counting(frame, loose)[1] == {"n": Clipped(below=2, above=0)}  # why decimals exist
    x, clipped = encode_counting(frame, exact)
    assert clipped == {"n": Clipped(below=0, above=0)}
    counts = pd.DataFrame({"n": [0.0, 1.0, 2.0, 0.0]})
    plain = parse_card(_card({"n": {k: v for k, v in spec.items() if k != "affine"}}))
    np.testing.assert_array_equal(x, encode(counts, plain))  # the same encoding as the counts themselves
    again = card_from_data(card_data(exact), "model.json")  # what model.json carries, for scoring
    assert again.column("n").decimals == 0
    np.testing.assert_array_equal(encode(frame, again), x)


def _gmsc_fate_frame():
    from tests.conftest import shared_or_skip

    return pd.read_csv(shared_or_skip("give_me_some_credit") / "give_me_some_credit" / "give_credit_homo_test.csv")


def test_gmsc_fate_names_and_affines_agree_with_the_file():
    """Each FATE column's name (federation/data/loaders.py) and affine (the card: Kaggle's mean and standard
    deviation) must fit the file: its code for 0 is -mean / sd, and a count column's codes are 1 / sd apart. The
    past-due counts have standard deviations 0.6% apart, so a swapped name fails here (x1 and x7 once were)."""
    from federation.data.loaders import GMSC_FATE_NAMES

    frame = _gmsc_fate_frame()
    card = builtin_card("give_me_some_credit_fate")
    counts = {"NumberOfOpenCreditLinesAndLoans", "NumberRealEstateLoansOrLines", "NumberOfDependents"}
    counts |= {n for n in GMSC_FATE_NAMES.values() if "Days" in n}
    checked = 0
    for code, name in GMSC_FATE_NAMES.items():
        col = card.column(name)
        if col.category not in ("credit_history", "capacity", "collateral"):
            continue
        offset, scale = col.affine
        values = np.unique(frame[code].dropna().to_numpy())
        # every column's minimum is a raw 0; FATE divided by the population standard deviation, 3e-6 smaller than
        # the sample one the card carries, which the 6-decimal codes just show
        assert values[0] == pytest.approx(-offset / scale, rel=1e-5, abs=2e-6), name
        if name in counts:
            assert 1 / np.diff(values).min() == pytest.approx(scale, rel=1e-4), name
        checked += 1
    assert checked == 9 and len(counts) == 6


def test_gmsc_fate_card_encodes_as_the_kaggle_card_does_in_original_units():
    """The two Give Me Some Credit cards agree once the FATE file's standardization is undone: the same bounds and
    transforms per column, and a FATE record's encoding equals that of its value in original units under the
    Kaggle card, with nothing clipped at 0."""
    from federation.data.loaders import GMSC_FATE_NAMES
    from federation.encoding import encode_counting

    fate, kaggle = builtin_card("give_me_some_credit_fate"), builtin_card("give_me_some_credit")
    credit = [n for n in GMSC_FATE_NAMES.values() if fate.column(n).category not in ("label", "sensitive")]
    for name in credit:
        assert (fate.column(name).bounds, fate.column(name).transform) == (
            kaggle.column(name).bounds,
            kaggle.column(name).transform,
        ), name
    frame = _gmsc_fate_frame().rename(columns=GMSC_FATE_NAMES)[credit]
    x, clipped = encode_counting(frame, fate)
    assert all(c.below == 0 for c in clipped.values())
    raw = pd.DataFrame(
        {
            n: np.round(frame[n] * fate.column(n).affine[1] + fate.column(n).affine[0], fate.column(n).decimals)
            for n in credit
        }
    )
    plain = parse_card(
        _card(
            {
                n: {"category": fate.column(n).category, "bounds": list(fate.column(n).bounds), "transform": "log1p"}
                for n in credit
            }
        )
    )
    np.testing.assert_allclose(x, encode(raw, plain), atol=1e-6)
    utilization = credit.index("RevolvingUtilizationOfUnsecuredLines")
    assert x.shape == (len(frame), 9) and np.unique(x[:, utilization]).size > 1000  # it keeps its spread


# ---- the distinct-value fast paths against the record-by-record pandas expressions -------------------------------
# consent_mask, labels_of and the categorical encoding test each distinct value once and spread the answer to its
# records (federation/policy.py, federation/encoding.py); these are the expressions they replace, over every dtype a
# loader or a Python caller hands them.


def _record_by_record_consent(values: pd.Series, consented) -> np.ndarray:
    allowed = {str(v).lower() for v in consented}
    return (values.astype(str).str.lower().isin(allowed) & values.notna()).to_numpy()


def _record_by_record_categories(values: pd.Series, categories) -> np.ndarray:
    codes = pd.Index(list(categories)).get_indexer(values.astype(str).to_numpy())
    codes[values.isna().to_numpy()] = -1
    return codes


RNG = np.random.default_rng(7)
CONSENT_COLUMNS = [
    pd.Series(RNG.random(300) < 0.9),  # numpy bool
    pd.Series(RNG.choice(["yes", "YES", "No", "no"], 300)),  # pandas' string dtype
    pd.Series(RNG.choice(["Yes", "no", None], 300), dtype=object),  # object, with missing values
    pd.Series(RNG.choice([1.0, 0.0, np.nan], 300)),  # floats, with NaN
    pd.Series(RNG.choice([1, 0, 2], 300)),  # ints
    pd.Series(pd.Categorical(RNG.choice(["True", "False"], 300))),
    pd.Series([], dtype=bool),
    # equal as numbers, written apart (a red team's finds: grouping the values, not their texts, consented all)
    pd.Series([1, True, True, 1.0, np.True_], dtype=object),
    pd.Series([True, 1], dtype=object),
    pd.Series([0.0, -0.0, 1.0]),
    pd.Series(pd.to_datetime(["2020-01-01", "2020-01-02"])),
]


@pytest.mark.parametrize("values", CONSENT_COLUMNS, ids=lambda v: str(v.dtype))
@pytest.mark.parametrize(
    "consented", [["yes"], ["true", "1"], ["1.0"], ["TRUE"], ["1"], ["0.0"], ["2020-01-01 00:00:00"], ["2020-01-01"]]
)
def test_the_consent_mask_equals_the_record_by_record_test(values, consented):
    from federation.policy import consent_mask

    card = parse_card(_card({"ok": {"category": "consent", "consented": consented}}))
    frame = pd.DataFrame({"ok": values, "y": np.zeros(len(values))})
    np.testing.assert_array_equal(consent_mask(frame, card), _record_by_record_consent(values, consented))


@pytest.mark.parametrize(
    "values",
    [
        pd.Series(RNG.choice(["own", "rent", "Own", "castle", None], 300), dtype=object),
        pd.Series(RNG.choice(["own", "Own", None], 300), dtype=object),  # 'Own' is no card category
        pd.Series(RNG.choice(["own", "rent"], 300)),
        pd.Series(RNG.choice([1, 2, 3], 300)),
        pd.Series(RNG.choice([1.0, 2.0, np.nan], 300)),
        pd.Series(pd.Categorical(RNG.choice(["own", "rent", "1"], 300))),
        pd.Series([1, 1.0, True], dtype=object),  # '1.0' and 'True' are no card category, though equal to 1
        pd.Series([1, 1, 2.0], dtype=object),
        pd.Series([-0.0, 0.0]),
    ],
    ids=lambda v: str(v.dtype),
)
def test_the_categorical_encoding_equals_the_record_by_record_lookup(values):
    categories = ["own", "rent", "1", "2.0"]
    card = parse_card(
        _card(
            {"home": {"category": "collateral", "type": "categorical", "categories": categories, "missing": "unknown"}}
        )
    )
    expected = _record_by_record_categories(values, categories)
    frame = pd.DataFrame({"home": values})
    if (expected < 0).any() and not values[expected < 0].isna().all():
        with pytest.raises(DataError, match="not among the card's categories"):
            encode(frame, card)
        return
    out = encode(frame, card)
    np.testing.assert_array_equal(out.argmax(axis=1)[expected >= 0], expected[expected >= 0])
    assert not out[expected < 0].any() and (out.sum(axis=1)[expected >= 0] == 1).all()


@pytest.mark.parametrize(
    "values",
    [
        pd.Series(RNG.choice([0, 1], 300).astype(np.int8)),
        pd.Series(RNG.choice([0.0, 1.0], 300)),
        pd.Series(RNG.choice(["0", "1.0", "1"], 300)),
        pd.Series(RNG.choice(["0", "1", "x"], 300), dtype=object),
        pd.Series(RNG.choice([0, 1, 2], 300)),
        pd.Series(RNG.choice([True, False], 300)),
    ],
    ids=lambda v: str(v.dtype),
)
@pytest.mark.parametrize("negative", [None, [0]])
def test_the_labels_equal_the_record_by_record_test(values, negative):
    from federation.policy import labels_of

    spec = {"category": "label", "positive": 1, **({"negative": negative} if negative else {})}
    card = parse_card({"name": "t", "columns": {"y": spec}})
    frame = pd.DataFrame({"y": values})
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.isna().any():  # a value that is no number: named by its first row, as before
        first = int(np.flatnonzero(numeric.isna().to_numpy())[0])
        with pytest.raises(
            DataError, match=f"non-numeric value .*at data row {first + 1}|first at data row {first + 1}"
        ):
            labels_of(frame, card)
        return
    positive = numeric.isin([1.0]).to_numpy()
    unlisted = ~(positive | numeric.isin([0.0]).to_numpy())
    if (negative and unlisted.any()) or (not negative and values.nunique() > 2):
        with pytest.raises(DataError, match=r"listed neither|distinct values"):
            labels_of(frame, card)
        return
    np.testing.assert_array_equal(labels_of(frame, card), positive.astype(np.float32))


@pytest.mark.parametrize(
    "values, spec, expected",
    [
        # a red team's finds against grouping equal values: each record is judged on its own text, as before
        (pd.Series([1, 1.0], dtype=object), {"positive": "1"}, [1, 0]),
        (pd.Series([True, 1], dtype=object), {"positive": "True", "negative": ["1"]}, [1, 0]),
        (pd.Series([1, 1.0, 1.0], dtype=object), {"positive": "1", "negative": ["1.0"]}, [1, 0, 0]),
        # integers beyond float precision compared as pandas compares them, not rounded to floats first
        (pd.Series([2**53 + 1, 0], dtype="int64"), {"positive": 2**53}, [0, 0]),
    ],
)
def test_labels_equal_as_numbers_but_written_apart_are_read_apart(values, spec, expected):
    from federation.policy import labels_of

    card = parse_card({"name": "t", "columns": {"y": {"category": "label", **spec}}})
    np.testing.assert_array_equal(labels_of(pd.DataFrame({"y": values}), card), expected)


def test_the_policy_never_takes_another_column_for_a_missing_one(monkeypatch):
    """The policy takes its columns by position; a card column absent from the data (check_schema refuses it first,
    bypassed here) is an error, never the frame's last column taken in its place (take(-1))."""
    import federation.policy as policy

    card = parse_card(_card({"income": {"category": "capacity", "bounds": [0, 100]}}))
    monkeypatch.setattr(policy, "check_schema", lambda frame, card: None)
    with pytest.raises(DataError, match="column 'income' is missing"):
        apply_policy(pd.DataFrame({"y": [0, 1], "other": [5.0, 6.0]}), card)
