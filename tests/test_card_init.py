"""`fedcredit card init CSV`: a skeleton card, refused by a run until reviewed, that runs once reviewed."""

import json
import os
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcredit.cli import app
from federation.card import load_card
from federation.card_skeleton import write_skeleton
from federation.errors import CardError

runner = CliRunner()
HEADER = "customer_no,consented,loan_status,gender,social_media_hours,months_on_book,income,home,recoveries,email,note"
STATUS = ["Fully Paid", "Charged Off", "Fully Paid", "Late (31-120 days)", "Fully Paid", "Default"]


def _loans(tmp_path: Path, n: int = 300) -> Path:
    """A Lending-Club-like book: six label values (three of them defaults), a sentinel income, a refused column of
    each kind, a categorical column and free text."""
    rows = [HEADER]
    for i in range(n):
        income = "999999.375" if i % 150 == 7 else str(20000 + (i * 7919) % 90000)
        rows.append(
            f"{1000 + i},{'no' if i % 10 == 3 else 'yes'},{STATUS[i % 6]},{'FM'[i % 2]},{i % 5},{(i * 13) % 240},"
            f"{income},{['own', 'rent', 'family'][i % 3]},{(i % 4) * 10.5},c{i}@example.org,free text {i * 31}"
        )
    path = tmp_path / "loans.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _reviewed(card: Path) -> None:
    """What a user does after checking each guess: deletes the review lines (and here keeps the bounds)."""
    card.write_text("".join(line for line in card.read_text().splitlines(True) if not line.startswith("review =")))


def test_the_skeleton_types_and_classifies_every_column(tmp_path):
    csv = _loans(tmp_path)
    skeleton = write_skeleton(csv)
    assert skeleton.path == tmp_path / "loans.toml"
    text = skeleton.path.read_text()
    columns = tomllib.loads(text)["columns"]
    assert list(columns) == HEADER.split(",")  # every column, in the file's order
    category = {name: spec["category"] for name, spec in columns.items()}
    assert category == {
        "customer_no": "record_id",  # one value per record
        "consented": "consent",
        "loan_status": "label",
        "gender": "sensitive",  # the policy's lexicon
        "social_media_hours": "non_credit",  # the policy's lexicon
        "months_on_book": "credit_history",
        "income": "capacity",
        "home": "collateral",
        "recoveries": "leaks_outcome",  # recorded after the decision
        "email": "identity",
        "note": "identity",  # free text with 300 distinct values
    }
    assert columns["consented"]["consented"] == ["yes"]
    assert columns["loan_status"]["positive"] == ["Charged Off", "Default", "Late (31-120 days)"]
    assert columns["loan_status"]["negative"] == ["Fully Paid"]
    assert columns["home"] == {
        "category": "collateral",
        "type": "categorical",
        "categories": ["family", "own", "rent"],  # a low-cardinality column: its categories
        "review": columns["home"]["review"],
    }
    income = columns["income"]
    assert income["type"] == "numeric" and income["bounds"] == [20000, 999999.375]  # the data's: to be replaced
    assert "review" in income and "public" in income["review"]
    # each candidate bound is marked as needing a public source, just above its column
    for name in ("months_on_book", "income"):
        above = text.split(f"[columns.{name}]")[0].rstrip().splitlines()
        assert "# TODO: bounds from the data; replace with a public source" in above[-3:]
    assert "sentinel" in text.split("[columns.income]")[0].rstrip().splitlines()[-1]
    # the refusals by name carry no review line (a wrong refusal loses a feature, never uses a prohibited one)
    assert all("review" not in columns[c] for c in ("gender", "social_media_hours", "recoveries", "email"))
    assert skeleton.to_review == sum("review" in spec for spec in columns.values()) == 5


def test_a_run_refuses_the_skeleton_until_every_review_line_is_gone(tmp_path):
    skeleton = write_skeleton(_loans(tmp_path))
    with pytest.raises(CardError) as err:
        load_card(skeleton.path)
    message = str(err.value)
    assert "\n" not in message
    assert "5 column(s) still marked for review (first: 'consented':" in message
    assert message.endswith("check each and delete its review line")
    _reviewed(skeleton.path)
    card = load_card(skeleton.path)
    assert card.label.positives == ("Charged Off", "Default", "Late (31-120 days)")


def test_a_binary_label_is_guessed_and_a_missing_label_must_be_named(tmp_path):
    csv = tmp_path / "book.csv"
    csv.write_text("income,defaulted\n" + "".join(f"{i},{int(i % 4 == 0)}\n" for i in range(40)))
    columns = tomllib.loads(write_skeleton(csv).path.read_text())["columns"]
    assert columns["defaulted"]["positive"] == 1 and "review" in columns["defaulted"]
    other = tmp_path / "other.csv"
    other.write_text("income,outcome_flag\n1,0\n2,1\n")
    with pytest.raises(CardError, match=r"no column looks like the label .* name it with --label COL"):
        write_skeleton(other)
    with pytest.raises(CardError, match="--label 'nope': no such column"):
        write_skeleton(other, label="nope")
    columns = tomllib.loads(write_skeleton(other, label="outcome_flag").path.read_text())["columns"]
    assert columns["outcome_flag"]["category"] == "label"


def test_card_init_never_replaces_a_card_without_force_and_writes_whole_cards_only(tmp_path, monkeypatch):
    csv = _loans(tmp_path, 60)
    out = tmp_path / "mine.toml"
    out.write_text("# my reviewed card\n")
    result = runner.invoke(app, ["card", "init", str(csv), "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {out} exists: pass --force to replace it"
    assert out.read_text() == "# my reviewed card\n"
    # --force replaces it, by a rename: a failure on the way leaves the old card and no temporary file
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_skeleton(csv, out, force=True)
    assert out.read_text() == "# my reviewed card\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loans.csv", "mine.toml"]
    monkeypatch.undo()
    result = runner.invoke(app, ["card", "init", str(csv), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output.splitlines()  # the path on a line of its own
    assert tomllib.loads(out.read_text())["name"] == "loans"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loans.csv", "mine.toml"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["missing.csv"], "data file not found"),
        (["{csv}", "--label", "nope"], "--label 'nope': no such column"),
        (["{csv}", "--out", "{tmp}/no/such/dir/card.toml"], "no folder"),
    ],
)
def test_card_init_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    csv = _loans(tmp_path, 20)
    args = [
        a.format(csv=csv, tmp=tmp_path) if "{" in a else str(tmp_path / a) if a.endswith(".csv") else a for a in args
    ]
    result = runner.invoke(app, ["card", "init", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loans.csv"]


def _run_on(csv, card, out):
    """`fedcredit run` of two iid lenders, one round, on the CSV and card."""
    options = ["--dataset", "csv", "--csv-path", str(csv), "--card-path", str(card), "--partition", "iid"]
    options += ["--lenders", "2", "--rounds", "1", "--epsilon", "4", "--engine", "inprocess", "--output-dir", str(out)]
    return runner.invoke(app, ["run", *options])


def test_card_init_then_run_round_trip(tmp_path):
    """card init -> review -> fedcredit run: the several default values label the records, the outcome-leaking
    column is refused with its reason, and the sentinel incomes clipped to the bounds are counted and warned of."""
    csv = _loans(tmp_path, 400)
    result = runner.invoke(app, ["card", "init", str(csv)])
    assert result.exit_code == 0, result.output
    card = tmp_path / "loans.toml"
    _reviewed(card)
    out = tmp_path / "run"
    result = _run_on(csv, card, out)
    assert result.exit_code == 0, result.output
    # the sentinel: 3 of the 400 incomes are 999999.375, and the bounds the skeleton read from the data include it, so
    # nothing is clipped; the warning appears once the user gives public bounds (below)
    manifests = [json.loads(p.read_text()) for p in sorted((out / "manifests").glob("lender_*.json"))]
    assert len(manifests) == 2
    for m in manifests:
        refused = {f["name"]: f for f in m["fields_refused"]}
        assert refused["recoveries"]["category"] == "leaks_outcome"
        assert "after the credit decision" in refused["recoveries"]["reason"]
        assert {"gender", "social_media_hours", "email", "note"} <= set(refused)
        assert [c["name"] for c in m["values_clipped"]] == ["months_on_book", "income"]
        assert all(c["below"] == c["above"] == 0 for c in m["values_clipped"])
    report = json.loads((out / "report.json").read_text())
    categories = {f["name"]: f["category"] for d in report["lender_details"] for f in d["fields_refused"]}
    assert categories["recoveries"] == "leaks_outcome"
    # public bounds for income, as a reviewer would write them: the sentinels now lie above and are clipped (another
    # file: a process re-reads a card by its path only when its data configuration changes)
    card = tmp_path / "loans-public-bounds.toml"
    card.write_text((tmp_path / "loans.toml").read_text().replace("[20000, 999999.375]", "[0, 500000]"))
    out2 = tmp_path / "run2"
    result = _run_on(csv, card, out2)
    assert result.exit_code == 0, result.output
    consented_sentinels = sum(1 for i in range(400) if i % 150 == 7 and i % 10 != 3)
    assert consented_sentinels == 3
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: column")]
    assert warnings == [
        f"warning: column 'income': {consented_sentinels} of 360 values lay outside the card's bounds [0, 500000] "
        f"and were clipped to them (0 below, {consented_sentinels} above)"
    ]
    manifests = [json.loads(p.read_text()) for p in sorted((out2 / "manifests").glob("lender_*.json"))]
    per_lender = [next(c for c in m["values_clipped"] if c["name"] == "income")["above"] for m in manifests]
    assert sum(per_lender) <= consented_sentinels  # the pooled holdout holds the rest


def test_every_lexicon_entry_is_pre_classified_as_its_kind():
    """The skeleton refuses every name the policy's lexicon marks, as the kind the lexicon gives (tests/test_lexicon.py
    checks the lexicon itself)."""
    import pandas as pd

    from federation.card_skeleton import draft
    from federation.policy import LEXICON

    names = {f"{entry.replace(' ', '_')}_score": kind for kind, entries in LEXICON.items() for entry in entries}
    frame = pd.DataFrame({**{name: [1.0, 2.0, 3.0] for name in names}, "defaulted": [0, 1, 0]})
    category = {c.name: c.spec["category"] for c in draft(frame)}
    assert {name: category[name] for name in names} == names
    assert category["defaulted"] == "label"
