import json

import numpy as np
import pandas as pd
import pytest

from federation.config import RunConfig
from federation.data import describe, load_holdout, load_lender, synthetic
from federation.data.partition import partition
from federation.errors import ConfigError, DataError
from federation.policy import label_problem
from tests.conftest import shared_or_skip


def test_synthetic_market_lender_types_and_sizes():
    market = synthetic.generate_market(records=50_000, lenders=10, seed=1)
    assert len(market) == 50_000
    sizes = market.groupby("lender_id").size()
    assert sizes.min() >= synthetic.MIN_LENDER_SIZE
    # big-tech platforms (type 0) are the biggest, rural cooperatives (type 4) the smallest
    by_type = market.groupby(market["lender_id"] % 5).size()
    assert by_type.idxmax() == 0 and by_type.idxmin() == 4
    rates = market.groupby(market["lender_id"] % 5)["defaulted"].mean()
    for i, kind in enumerate(synthetic.LENDER_TYPES):
        assert abs(rates[i] - kind.default_rate) < 0.02, kind.name
    # borrowers differ by lender type: platform borrowers are younger with thinner files
    young = market.groupby(market["lender_id"] % 5)[["age", "months_on_file"]].median()
    assert young.loc[0, "age"] < young.loc[1, "age"] and young.loc[0, "months_on_file"] < young.loc[1, "months_on_file"]


def test_synthetic_lender_is_reproducible_alone():
    market = synthetic.generate_market(records=5_000, lenders=5, seed=4)
    alone = synthetic.generate_lender(4, 3, int(synthetic.lender_sizes(5_000, 5, 4)[3]))
    np.testing.assert_array_equal(market[market.lender_id == 3].reset_index(drop=True).to_numpy(), alone.to_numpy())


def test_synthetic_default_risk_depends_on_credit_features_nonlinearly():
    market = synthetic.generate_market(records=60_000, lenders=5, seed=2)
    high_util = market.revolving_utilization > 0.9
    mid_util = market.revolving_utilization.between(0.4, 0.6)
    low_util = market.revolving_utilization < 0.1
    d = market.defaulted
    # convex in utilization: the jump from mid to high exceeds the jump from low to mid
    assert d[high_util].mean() - d[mid_util].mean() > d[mid_util].mean() - d[low_util].mean()


@pytest.mark.parametrize("method", ["iid", "dirichlet", "quantity"])
def test_partitions_cover_every_record_once(method):
    labels = (np.random.default_rng(0).random(3000) < 0.2).astype(np.float32)
    parts = partition(labels, 7, method, alpha=0.5, seed=3)
    assert len(parts) == 7
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == 3000
    assert min(len(p) for p in parts) >= 10
    assert all(
        np.array_equal(a, b) for a, b in zip(parts, partition(labels, 7, method, alpha=0.5, seed=3), strict=False)
    )


def test_dirichlet_skews_labels_and_quantity_skews_sizes():
    labels = (np.random.default_rng(0).random(20000) < 0.3).astype(np.float32)
    label_rates = [labels[p].mean() for p in partition(labels, 10, "dirichlet", 0.1, 0)]
    iid_rates = [labels[p].mean() for p in partition(labels, 10, "iid", 0.1, 0)]
    assert np.std(label_rates) > 5 * np.std(iid_rates)
    sizes = [len(p) for p in partition(labels, 10, "quantity", 0.5, 0)]
    assert max(sizes) > 4 * min(sizes)


def test_lender_train_test_and_pooled_holdout_are_disjoint():
    cfg = RunConfig(records=4000, lenders=4, partition="iid", seed=5)
    summary = describe(cfg)
    hx, hy = load_holdout(cfg)
    assert len(hy) == summary.holdout > 0
    lenders = [load_lender(cfg, i) for i in range(4)]
    train_rows = {r.tobytes() for d in lenders for r in d.x_train}
    test_rows = {r.tobytes() for d in lenders for r in d.x_test}
    hold_rows = {r.tobytes() for r in hx}
    # exact feature-row duplicates across splits are possible but must be rare
    assert len(train_rows & hold_rows) < 0.01 * len(hold_rows)
    assert len(train_rows & test_rows) < 0.01 * len(test_rows)
    manifest = lenders[0].manifest
    assert manifest["records_used"] == manifest["records_total"] - manifest["records_without_consent"]
    assert manifest["train_records"] + manifest["test_records"] == manifest["records_used"]


def test_more_lenders_than_records_is_an_error():
    with pytest.raises(ConfigError, match="cannot give 50 lenders"):
        describe(RunConfig(records=100, lenders=50))


# ---- real schemas, on small fixtures ---------------------------------------------------------


def test_taiwan_fate_split_fixture(fixture_dir):
    cfg = RunConfig(dataset="taiwan_default", data_dir=str(fixture_dir("taiwan_default")), partition="iid", lenders=2)
    data = load_lender(cfg, 0)
    refused = {f["name"] for f in data.manifest["fields_refused"]}
    assert refused == {"SEX", "EDUCATION", "MARRIAGE", "AGE"}
    assert data.manifest["card"] == "taiwan_default"
    assert "PAY_6[-inf,-1.5)" in data.features


def test_taiwan_uci_original_fixture(fixture_dir):
    cfg = RunConfig(
        dataset="taiwan_default",
        data_dir=str(fixture_dir("taiwan_default", "taiwan_default_uci")),
        partition="iid",
        lenders=2,
    )
    data = load_lender(cfg, 1)
    assert {f["name"] for f in data.manifest["fields_refused"]} == {"SEX", "EDUCATION", "MARRIAGE", "AGE"}
    assert len(data.features) == 49  # the same encoded features as the FATE form
    assert np.all(np.abs(data.x_train) <= 1)


def test_give_me_some_credit_fixtures(fixture_dir, tmp_path):
    fate = load_lender(
        RunConfig(
            dataset="give_me_some_credit", data_dir=str(fixture_dir("give_me_some_credit")), partition="iid", lenders=2
        ),
        0,
    )
    assert [f["name"] for f in fate.manifest["fields_refused"]] == ["age"]
    kaggle_dir = tmp_path / "kaggle"
    import shutil

    from tests.conftest import FIXTURES

    shutil.copytree(FIXTURES / "give_me_some_credit_kaggle", kaggle_dir / "give_me_some_credit")
    kaggle = load_lender(
        RunConfig(dataset="give_me_some_credit", data_dir=str(kaggle_dir), partition="iid", lenders=2), 0
    )
    assert "MonthlyIncome__missing" in kaggle.features  # Kaggle's missing incomes become an indicator


def test_german_and_spanish_fixtures(fixture_dir):
    german = load_lender(
        RunConfig(dataset="german_credit", data_dir=str(fixture_dir("german_credit")), partition="iid", lenders=2), 0
    )
    assert {f["name"] for f in german.manifest["fields_refused"]} == {
        "personal_status_and_sex",
        "age_in_years",
        "foreign_worker",
        "telephone",
        "present_residence_since",
    }
    spanish = load_lender(
        RunConfig(dataset="spanish_credit", data_dir=str(fixture_dir("spanish_credit")), partition="iid", lenders=2), 0
    )
    assert {f["name"] for f in spanish.manifest["fields_refused"]} == {"Age", "Marital"}
    assert "Income__missing" in spanish.features


# ---- real data (skip when ../shared/datasets is absent) ---------------------------------------


@pytest.mark.parametrize(
    "dataset,rows,rate",
    [
        ("taiwan_default", 30000, 0.221),
        ("give_me_some_credit", 30000, 0.067),
        ("german_credit", 1000, 0.30),
        ("spanish_credit", 4454, 0.28),
    ],
)
def test_real_datasets_load_through_the_policy(dataset, rows, rate):
    data_dir = shared_or_skip(dataset)
    cfg = RunConfig(dataset=dataset, data_dir=str(data_dir), partition="iid", lenders=3)
    summary = describe(cfg)
    assert summary.records == rows
    hx, hy = load_holdout(cfg)
    assert abs(hy.mean() - rate) < 0.03
    assert np.isfinite(hx).all() and np.abs(hx).max() <= 1.0


def test_real_data_missing_dir_error():
    with pytest.raises(DataError, match="data directory not found"):
        describe(RunConfig(dataset="german_credit", data_dir="/nonexistent/fedcredit-data", partition="iid"))


# ---- labels that cannot train a credit model: refused before anything trains -------------------

LABEL_CARD = """
name = "mine"
[columns.income]
category = "capacity"
bounds = [0, 100]
[columns.bank]
category = "lender"
[columns.consent]
category = "consent"
consented = ["yes"]
[columns.defaulted]
category = "label"
positive = {positive}
"""


def _own_data(tmp_path, labels, positive="1", consent=None, banks=None, partition="iid") -> RunConfig:
    """A bring-your-own CSV and card in tmp_path: one row per label."""
    tmp_path.mkdir(exist_ok=True)
    consent = consent or ["yes"] * len(labels)
    banks = banks or [i % 2 for i in range(len(labels))]
    rows = ["income,bank,consent,defaulted"]
    rows += [f"{i % 100},{b},{c},{y}" for i, (y, c, b) in enumerate(zip(labels, consent, banks, strict=False))]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "card.toml").write_text(LABEL_CARD.format(positive=positive))
    return RunConfig(
        dataset="csv",
        csv_path=str(tmp_path / "data.csv"),
        card_path=str(tmp_path / "card.toml"),
        partition=partition,
        lenders=2,
    )


def _one_line_data_error(cfg: RunConfig) -> str:
    with pytest.raises(DataError) as err:
        describe(cfg)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_label_with_one_class_is_refused_naming_the_column_and_the_values_seen(tmp_path):
    message = _one_line_data_error(_own_data(tmp_path, [1] * 80))
    assert message == (
        "label column 'defaulted' has one class only (values seen: 1); "
        "a credit model needs both defaults and non-defaults"
    )


def test_a_label_without_defaults_also_says_the_positive_value_never_occurs(tmp_path):
    message = _one_line_data_error(_own_data(tmp_path, [0] * 80))
    assert message == (
        "label column 'defaulted' has one class only (values seen: 0); the card's positive value 1 "
        "never occurs; a credit model needs both defaults and non-defaults"
    )


@pytest.mark.parametrize(
    "labels,positive,seen",
    [
        ([i % 2 for i in range(80)], "2", "0, 1"),
        (["good", "bad"] * 40, '"Bad"', "'bad', 'good'"),  # the card's positive value is matched exactly
    ],
)
def test_a_positive_value_that_never_occurs_is_refused(tmp_path, labels, positive, seen):
    message = _one_line_data_error(_own_data(tmp_path, labels, positive))
    assert message.startswith("the card's positive value ") and "never occurs in label column 'defaulted'" in message
    assert message.endswith(f"(values seen: {seen})")


def test_labels_are_checked_on_the_consented_records_too(tmp_path):
    labels = [int(i % 4 == 0) for i in range(80)]
    consent = ["no" if y else "yes" for y in labels]  # every default lacks consent
    message = _one_line_data_error(_own_data(tmp_path, labels, consent=consent))
    assert message.startswith(
        "label column 'defaulted' has one class only among the consented records (values seen: 0)"
    )
    # (another folder: the loaded data are cached by path)
    message = _one_line_data_error(_own_data(tmp_path / "none", labels, consent=["no"] * 80))
    assert message == "no record has consent (column 'consent' never holds 'yes'); nothing can train"


def test_a_one_class_lender_is_no_error_but_label_problem_names_it(tmp_path):
    # natural partition: bank 0 holds both classes, bank 1 only non-defaults (as Dirichlet 0.1 can produce)
    labels = [int(i % 6 == 0) for i in range(80)]
    cfg = _own_data(tmp_path, labels, partition="natural")  # defaults are even rows: all at bank 0
    summary = describe(cfg)
    assert summary.lender_records[1] > 0
    assert label_problem(load_lender(cfg, 0).y_train) is None
    problem = label_problem(load_lender(cfg, 1).y_train)
    assert problem is not None and problem.startswith("training records hold one class only (")
    assert "non-defaults" in problem


def test_a_lender_without_consented_records_is_refused(tmp_path):
    labels = [int(i % 3 == 0) for i in range(80)]
    consent = ["yes" if i % 2 == 0 else "no" for i in range(80)]  # bank 1 (odd rows) never consented
    cfg = _own_data(tmp_path, labels, consent=consent, partition="natural")
    assert _one_line_data_error(cfg) == (
        "lender 1 cannot train: no training records (after consent and the train/test split)"
    )


@pytest.mark.parametrize(
    "y,expected",
    [
        (np.array([], dtype=np.float32), "no training records (after consent and the train/test split)"),
        (
            np.zeros(7, dtype=np.float32),
            "training records hold one class only (7 non-defaults); a credit model needs both",
        ),
        (np.ones(3, dtype=np.float32), "training records hold one class only (3 defaults); a credit model needs both"),
        (np.array([0, 1, 0], dtype=np.float32), None),
    ],
)
def test_label_problem(y, expected):
    assert label_problem(y) == expected


def test_no_records_under_a_card_without_consent_column_is_a_data_error():
    """Found by the type checker: with no consent column (public data) and no records, check_labels read the name
    of the missing consent column and raised an AttributeError instead of saying there is nothing to train on."""
    import pandas as pd

    from federation.card import parse_card
    from federation.policy import check_labels

    card = parse_card(
        {
            "name": "public",
            "columns": {
                "income": {"category": "capacity", "bounds": [0, 100]},
                "defaulted": {"category": "label", "positive": 1},
            },
        }
    )
    with pytest.raises(DataError, match="the data hold no records; nothing can train"):
        check_labels(pd.DataFrame({"income": [], "defaulted": []}), card)


def _sklearn_holdout_split(labels, fraction, seed):
    """The split as it was made with sklearn's train_test_split (the reference the numpy split must equal)."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    if len(labels) < 2:
        return index, index[:0]
    stratify = labels if np.bincount(labels.astype(int), minlength=2).min() >= 2 else None
    try:
        pool, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:
        pool, held = train_test_split(index, test_size=fraction, random_state=seed)
    return np.sort(pool), np.sort(held)


@pytest.mark.parametrize("n", [2, 3, 5, 7, 10, 11, 20, 33, 100, 257, 1000, 4096])
@pytest.mark.parametrize("rate", [0.0, 0.02, 0.1, 0.5])
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.25, 0.5])
def test_holdout_split_equals_sklearn_train_test_split(n, rate, fraction):
    from federation.data.partition import holdout_split

    for seed in (0, 1, 7, 1000 + n):
        labels = (np.random.default_rng([n, seed]).random(n) < rate).astype(np.float32)
        if rate and n >= 4:
            labels[:2] = 1.0  # some splits stratified, some (one positive) not
        if n == 5:
            labels[:] = [1, 0, 1, 0, 0]
        got = holdout_split(labels, fraction, seed)
        want = _sklearn_holdout_split(labels, fraction, seed)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_holdout_split_refuses_an_empty_training_split_like_sklearn():
    from federation.data.partition import holdout_split

    labels = np.array([0.0, 1.0])
    with pytest.raises(ValueError):
        _sklearn_holdout_split(labels, 0.6, 0)
    with pytest.raises(ValueError):
        holdout_split(labels, 0.6, 0)


# ---- each lender loaded once a process ---------------------------------------------------------------------


def test_a_run_loads_each_lenders_data_exactly_once(tmp_path, monkeypatch):
    """Validation, the manifests and 3 rounds of 3 lenders: each lender's records are made and encoded once."""
    from collections import Counter, OrderedDict

    from fedcredit.runner import run
    from federation.data import pipeline

    monkeypatch.setattr(pipeline, "_LOADED", OrderedDict())  # nothing left from another test's run
    loads: Counter = Counter()
    real = pipeline._load_own

    def counted(key, lender, frame=None):
        loads[lender] += 1
        return real(key, lender, frame)

    monkeypatch.setattr(pipeline, "_load_own", counted)
    cfg = RunConfig(records=1500, lenders=3, rounds=3, epsilon=3.0, engine="inprocess", output_dir=str(tmp_path / "r"))
    run(cfg, on_round=lambda s: None)
    assert loads == Counter({0: 1, 1: 1, 2: 1})


def test_the_lender_cache_never_hands_one_lender_anothers_records():
    from federation.data import pipeline

    cfg = RunConfig(records=3000, lenders=3, partition="iid", seed=5)
    first = [load_lender(cfg, i) for i in range(3)]
    again = [load_lender(cfg, i) for i in (2, 0, 1)]  # cached, asked in another order
    fresh = [pipeline._load_own(pipeline._data_key(cfg), i) for i in range(3)]  # made anew, uncached
    for i, data in enumerate(first):
        for other in (again[(i + 1) % 3], fresh[i]):
            assert other.lender == data.lender == data.manifest["lender"] == i
            np.testing.assert_array_equal(other.x_train, data.x_train)
            np.testing.assert_array_equal(other.y_test, data.y_test)
            assert other.manifest == data.manifest
    digests = {d.manifest["records_digest"] for d in first}
    assert len(digests) == 3  # three lenders, three sets of records
    # Another data configuration (another seed, another test fraction) is another entry, never this one's.
    for changed in (cfg.replace(seed=6), cfg.replace(test_fraction=0.3)):
        other = load_lender(changed, 0)
        assert other.manifest["records_digest"] != first[0].manifest["records_digest"] or len(other.y_test) != len(
            first[0].y_test
        )
    # A caller that edits its manifest edits its own copy.
    first[0].manifest["lender"] = 99
    assert load_lender(cfg, 0).manifest["lender"] == 0


def test_canaries_join_only_the_asking_lenders_copy():
    cfg = RunConfig(records=3000, lenders=3, partition="iid", seed=5)
    plain = load_lender(cfg, 1)
    x = np.zeros((4, plain.x_train.shape[1]), dtype=np.float32)
    with_canaries = load_lender(cfg, 1, (x, np.ones(4, dtype=np.float32)))
    assert len(with_canaries.y_train) == len(plain.y_train) + 4
    assert len(load_lender(cfg, 1).y_train) == len(plain.y_train)
    assert with_canaries.manifest["train_records"] == plain.manifest["train_records"]


def test_describe_counts_the_holdout_load_holdout_returns():
    from federation.data import pipeline

    for cfg in (RunConfig(records=4000, lenders=7, seed=3), RunConfig(records=4000, lenders=7, partition="iid")):
        pipeline._LOADED.clear()
        summary = describe(cfg)
        assert summary.holdout == len(load_holdout(cfg)[1]) > 0
        assert summary.lender_records == [len(load_lender(cfg, i).y_train) for i in range(7)]
        assert describe(cfg) == summary  # the same whether the lenders were cached or not


# ---- errors name the file's first bad record; values clipped to the bounds are counted and warned of ---------------

CLIP_CARD = """
name = "clip"
[columns.income]
category = "capacity"
bounds = [0, 100000]
[columns.months]
category = "credit_history"
bounds = [0, 600]
[columns.defaulted]
category = "label"
positive = 1
"""


def _clip_data(tmp_path, incomes, months=None) -> RunConfig:
    tmp_path.mkdir(exist_ok=True)
    months = months or [i % 600 for i in range(len(incomes))]
    rows = ["income,months,defaulted"] + [
        f"{x},{m},{i % 3 == 0:d}" for i, (x, m) in enumerate(zip(incomes, months, strict=True))
    ]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "card.toml").write_text(CLIP_CARD)
    return RunConfig(
        dataset="csv",
        csv_path=str(tmp_path / "data.csv"),
        card_path=str(tmp_path / "card.toml"),
        partition="iid",
        lenders=3,
        seed=2,
    )


def test_an_error_names_the_first_bad_record_of_the_file_however_the_records_are_shared(tmp_path):
    """Every record bad, the first one included: the error names data row 1 and all of them, not the first bad
    record of whichever lender's share (or of the pooled holdout) happened to be encoded first (issue 15: 'row 9')."""
    cfg = _clip_data(tmp_path, ["unknown"] * 300)
    assert _one_line_data_error(cfg) == (
        "column 'income' has non-numeric value 'unknown' (first at data row 1, 300 rows in all)"
    )
    incomes = [str(1000 + i) for i in range(300)]
    incomes[0] = incomes[241] = ""
    message = _one_line_data_error(_clip_data(tmp_path / "nan", incomes))
    assert message.startswith("column 'income' has 2 NaN/missing value(s) (first at data row 1); ")


def test_values_clipped_are_counted_in_each_manifest_and_warned_of_once_per_column(tmp_path, capsys):
    from federation.data import pipeline
    from federation.encoding import Clipped

    incomes = [999999.375 if i % 25 == 4 else -1 if i % 60 == 0 else 1000 * (i % 90) for i in range(300)]
    cfg = _clip_data(tmp_path, incomes)
    summary = describe(cfg)
    above, below = sum(i % 25 == 4 for i in range(300)), sum(i % 60 == 0 for i in range(300))
    assert summary.values_clipped == {"income": Clipped(below, above), "months": Clipped(0, 0)}
    assert summary.clip_records == 300
    expected = (
        f"column 'income': {above + below} of 300 values lay outside the card's bounds [0, 100000] and were clipped "
        f"to them ({below} below, {above} above)"
    )
    assert summary.warnings == (expected,)  # one line for the column, none for the column that lost nothing
    assert capsys.readouterr().err.splitlines() == [f"warning: {expected}"]
    # each lender's manifest counts its own records' values: those of the lenders and the holdout add up to the file's
    manifests = [load_lender(cfg, i).manifest for i in range(3)]
    for m in manifests:
        assert [c["name"] for c in m["values_clipped"]] == ["income", "months"]
    lent = sum(next(c["above"] for c in m["values_clipped"] if c["name"] == "income") for m in manifests)
    raw, _ = pipeline._raw(pipeline._data_key(cfg))
    _, held = pipeline._assignment(pipeline._data_key(cfg))
    assert lent + int((raw["income"].iloc[held] > 100000).sum()) == above


def test_the_manifests_clip_counts_carry_counts_only(tmp_path):
    """A manifest's values_clipped is counts of used columns: the message inspector and the verifier refuse a count
    that carries anything else (a record's value), a negative count, a column not used, or more values than records."""
    from flwr.app import ConfigRecord

    from federation.audit_trail.verify import body_type_problem
    from federation.messages import manifest_from_record, manifest_to_record

    manifest = load_lender(_clip_data(tmp_path, [1000 * (i % 120) for i in range(300)]), 0).manifest
    manifest.pop("records_digest")
    manifest.update(data_commitment="00" * 32, policy={"lender": 0})
    record = manifest_to_record(0, manifest)
    assert manifest_from_record(record)["values_clipped"] == manifest["values_clipped"]
    good = manifest["values_clipped"][0]
    for bad in ({**good, "value": 117000}, {**good, "above": -1}, {**good, "above": True}, {"name": 5, "below": 0}):
        tampered = ConfigRecord({**dict(record), "values-clipped": [json.dumps(bad)]})
        with pytest.raises(ValueError, match="a clipped-values count holds"):
            manifest_from_record(tampered)
    body = {"type": "lender_manifest", "run": "r", "lender": 0, "public_key": "k", **manifest}
    assert body_type_problem(body) is None
    records = manifest["records_used"]
    for bad, problem in (
        ([{**good, "value": 117000}], "'values_clipped': a clipped-values count holds"),
        ([{**good, "name": "gender"}], "'values_clipped' must count each used field at most once"),
        ([good, good], "'values_clipped' must count each used field at most once"),
        ([{**good, "below": records, "above": 1}], "'values_clipped' counts more values than the records used"),
        ({"income": 3}, "'values_clipped' must be a list of counts"),
    ):
        assert (body_type_problem({**body, "values_clipped": bad}) or "").startswith(problem), bad


def test_a_card_edited_between_two_runs_of_one_process_is_read_again(tmp_path):
    """The caches are keyed by the files' paths: a card (or CSV) changed since is read again, not served stale."""
    import os

    cfg = _clip_data(tmp_path, [1000 * (i % 150) for i in range(300)])
    first = describe(cfg)
    assert first.values_clipped["income"].above > 0
    card = tmp_path / "card.toml"
    card.write_text(CLIP_CARD.replace("bounds = [0, 100000]", "bounds = [0, 200000]"))
    stat = card.stat()
    os.utime(card, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later edit, whatever the clock's grain
    again = describe(cfg)
    assert again.values_clipped["income"].above == 0 and again.card_sha256 != first.card_sha256
    assert load_lender(cfg, 0).manifest["card_sha256"] == again.card_sha256


def test_a_second_describe_of_a_loaded_synthetic_federation_generates_no_lender_again(monkeypatch):
    """describe counts each natural lender's held-out records; a second run in the same process (a sweep, a
    benchmark) whose lenders are still loaded reuses the counts instead of generating every lender again, and gets
    the same summary; after forget_loaded every lender is generated again."""
    from federation.data import pipeline

    cfg = RunConfig(records=3000, lenders=3, seed=11)
    pipeline.forget_loaded()
    generated = []
    honest = pipeline._synthetic_natural

    def counting(key, lender):
        generated.append(lender)
        return honest(key, lender)

    monkeypatch.setattr(pipeline, "_synthetic_natural", counting)
    first = describe(cfg)
    assert sorted(generated) == [0, 1, 2]
    assert describe(cfg) == first and sorted(generated) == [0, 1, 2]
    assert first.holdout == len(load_holdout(cfg)[1])  # which generates the lenders' held-out records itself
    pipeline.forget_loaded()
    generated.clear()
    assert describe(cfg) == first and sorted(generated) == [0, 1, 2]


def test_the_records_digest_changes_with_any_value_name_or_label():
    """The digest a lender commits to in its manifest (records_digest, keyed in clients/home.py) is SHA-256 over the
    values themselves: one changed number, text, missing value, column name or label gives another digest."""
    from federation.data.pipeline import _data_hash

    frame = pd.DataFrame({"income": [1.0, 2.5, 3.0], "home": ["own", "rent", "own"], "lines": [1, 2, 3]})
    labels = np.array([0, 1, 0], dtype=np.float32)
    base = _data_hash(frame, labels)
    assert _data_hash(frame.copy(), labels.copy()) == base
    edits = [
        frame.assign(income=[1.0, 2.5, 3.0000001]),
        frame.assign(home=["own", "rent", "rent"]),
        frame.assign(home=["own", "rent", None]),
        frame.assign(lines=[1, 2, 4]),
        frame.rename(columns={"lines": "loans"}),
        frame[["home", "income", "lines"]],
        frame.iloc[[1, 0, 2]].reset_index(drop=True),
    ]
    digests = {_data_hash(edit, labels) for edit in edits} | {_data_hash(frame, labels[[1, 0, 2]])}
    assert base not in digests and len(digests) == len(edits) + 1


@pytest.mark.parametrize(
    "one, other",
    [
        # a red team's collisions against the first SHA-256 digest, which wrote every number as a float64
        ({"id": np.array([2**53, 5])}, {"id": np.array([2**53 + 1, 5])}),
        ({"id": np.array([2**64 - 1, 5], dtype=np.uint64)}, {"id": np.array([2**64 - 2, 5], dtype=np.uint64)}),
        ({"n": [1, 2]}, {"n": [1.0, 2.0]}),
        ({"x": [0.0, 1.0]}, {"x": [-0.0, 1.0]}),
        # and which wrote other values as text alone
        ({"v": pd.Series([1, "a"], dtype=object)}, {"v": pd.Series(["1", "a"], dtype=object)}),
        ({"v": pd.Series([True, "a"], dtype=object)}, {"v": pd.Series(["True", "a"], dtype=object)}),
        ({"v": [True, False]}, {"v": ["True", "False"]}),
        ({"v": pd.Categorical(["a", "b"])}, {"v": ["a", "b"]}),
        ({"v": pd.array([1, None], dtype="Int64")}, {"v": [1.0, np.nan]}),
        ({1: [1.0, 2.0]}, {"1": [1.0, 2.0]}),
        ({"v": ["a", None]}, {"v": ["a", "None"]}),
    ],
    ids=str,
)
def test_records_that_differ_only_in_type_or_beyond_float_precision_have_other_digests(one, other):

    from federation.data.pipeline import _data_hash

    labels = np.array([0, 1], dtype=np.float32)
    assert _data_hash(pd.DataFrame(one), labels) != _data_hash(pd.DataFrame(other), labels)


def test_the_records_digest_covers_the_row_count_and_the_labels_type():
    """Labels of another dtype or length, with features of the same bytes, are other records."""
    from federation.data.pipeline import _data_hash

    two = pd.DataFrame({"a": [1.0, 3.0], "b": [2.0, 4.0]})
    one = pd.DataFrame({"a": [1.0], "b": [3.0]})
    assert _data_hash(two, np.array([1, 0], dtype=np.int64)) != _data_hash(two, np.array([1, 0, 0, 0], dtype=np.int32))
    assert _data_hash(two, np.array([1, 0], dtype=np.int8)) != _data_hash(two, np.array([1, 0], dtype=bool))
    # a row moved from the features into the labels' bytes
    moved = np.concatenate([np.array([2.0, 4.0]).view(np.float32), np.zeros(2, dtype=np.float32)])
    assert _data_hash(two, np.zeros(2, dtype=np.float32)) != _data_hash(one, moved)
    # a text value a str() of which cannot be encoded (a lone surrogate) is hashed, not a crash
    assert _data_hash(pd.DataFrame({"t": pd.Series(["\ud83d", "x"], dtype=object)}), np.zeros(2, dtype=np.float32))


# A fresh process, as a lender process or the CLI is: it loads a lender of the synthetic market, then one of a
# Dirichlet split, and says whether the partition libraries were loaded after each.
_PARTITION_IMPORTS = """
import json, sys
from federation.config import RunConfig
from federation.data import load_lender
cfg = RunConfig(lenders=5, records=2000)
heavy = lambda: sorted(m for m in ("datasets", "flwr_datasets") if m in sys.modules)
natural = len(load_lender(cfg, 0).y_train), heavy()
dirichlet = len(load_lender(cfg.replace(partition="dirichlet"), 0).y_train), heavy()
print(json.dumps([natural, dirichlet]))
"""


def test_only_a_partition_imports_datasets_and_flwr_datasets():
    """They take 1-1.5 s to import (flwr-datasets brings seaborn, scipy.stats and matplotlib): a synthetic market's
    lender, made lender by lender, must not pay for them; a Dirichlet split still uses flwr-datasets' partitioner."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _PARTITION_IMPORTS],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
        cwd=root,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (natural_records, natural_heavy), (dirichlet_records, dirichlet_heavy) = json.loads(out.stdout.splitlines()[-1])
    assert natural_records > 0 and natural_heavy == []
    assert dirichlet_records > 0 and dirichlet_heavy == ["datasets", "flwr_datasets"]
