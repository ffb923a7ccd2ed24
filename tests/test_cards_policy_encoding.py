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
