"""`fedcredit score`: new applicants scored from the run folder alone, as the lenders encoded their borrowers.

Three small synthetic runs (logistic regression, MLP and gbdt, one round each). The applicant file is lender 0's own raw
records (every column of the synthetic card: ids, consent, label, the refused fields); the training path is
load_lender's encoding and the model.pt the run wrote.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fedcredit.cli import app
from fedcredit.runner import run
from federation.audit_trail.attest import encoding_of
from federation.audit_trail.verify import VerificationFailed, verify_run
from federation.card import CARDS_DIR, builtin_card, card_data, card_from_data
from federation.config import RunConfig
from federation.data import load_lender
from federation.data.pipeline import _data_key, _lender_frame
from federation.encoding import encode, encoding_text
from federation.model import Scorecard, model_for, predict_proba
from federation.policy import apply_policy
from federation.scoring import CONTINUOUS_BINS, load_model, score_frame
from tests.forge import Forger, copy_run, entries_of

runner = CliRunner()
CFG = RunConfig(records=1200, lenders=3, rounds=1, epsilon=3.0, engine="inprocess")


def _train(root: Path, model: str) -> tuple[Path, Path]:
    """A finished run and lender 0's raw records as an applicant file."""
    cfg = CFG.replace(model=model, output_dir=str(root / "run"))
    folder = run(cfg, on_round=lambda s: None)
    raw, _ = _lender_frame(_data_key(cfg), 0)
    applicants = root / "applicants.csv"
    raw.to_csv(applicants, index=False)
    return folder, applicants


@pytest.fixture(scope="module")
def logreg(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("score-logreg"), "logreg")


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("score-mlp"), "mlp")


@pytest.fixture(scope="module")
def gbdt(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("score-gbdt"), "gbdt")


def _score(folder: Path, applicants: Path, out: Path, *extra: str):
    result = runner.invoke(app, ["score", str(folder), "--csv", str(applicants), "--out", str(out), *extra])
    return result, result.output


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("kind", ["logreg", "mlp", "gbdt"])
def test_scores_equal_the_trained_models_probabilities_through_the_training_path(kind, request, tmp_path):
    folder, applicants = request.getfixturevalue(kind)
    result, output = _score(folder, applicants, tmp_path / "scores.csv")
    assert result.exit_code == 0, output
    scored = {int(r["borrower_id"]): r for r in _read(tmp_path / "scores.csv")}

    cfg = CFG.replace(model=kind)
    data = load_lender(cfg, 0)  # the lender's records as training encoded them
    info = json.loads((folder / "model.json").read_text())
    net = model_for(cfg, len(info["features"]))  # gbdt: the ensemble's arrays, as the lenders scored with
    net.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    # which borrower each training row is: the lender's consented records, encoded by the training functions
    raw = pd.read_csv(applicants)
    policy = apply_policy(raw, builtin_card("synthetic"))
    ids_of: dict[bytes, list[int]] = {}
    for row, borrower in zip(
        encode(policy.features, builtin_card("synthetic")), raw.loc[policy.features.index, "borrower_id"], strict=True
    ):
        ids_of.setdefault(row.tobytes(), []).append(int(borrower))

    x = np.concatenate([data.x_train, data.x_test])
    expected = predict_proba(net, x)
    assert len(scored) == len(x) == policy.records_used
    for row, p in zip(x, expected, strict=True):
        for borrower in ids_of[row.tobytes()]:
            assert abs(float(scored[borrower]["probability_default"]) - p) <= 1e-9
            assert float(scored[borrower]["score"]) == pytest.approx(
                float(Scorecard().score(np.array([p]))[0]), abs=1e-9
            )
    assert f"not scored: {policy.records_without_consent} applicant(s) without consent" in output


def test_an_applicant_scored_alone_gets_the_number_it_gets_among_all(mlp, tmp_path):
    folder, applicants = mlp
    frame = pd.read_csv(applicants)
    frame = frame[frame["consent"]]
    frame.iloc[[7]].to_csv(tmp_path / "one.csv", index=False)
    assert _score(folder, applicants, tmp_path / "all.csv")[0].exit_code == 0
    assert _score(folder, tmp_path / "one.csv", tmp_path / "alone.csv")[0].exit_code == 0
    (alone,) = _read(tmp_path / "alone.csv")
    among = next(r for r in _read(tmp_path / "all.csv") if r["borrower_id"] == alone["borrower_id"])
    assert abs(float(alone["probability_default"]) - float(among["probability_default"])) <= 1e-12


def test_the_points_of_an_applicants_bins_sum_to_its_score(logreg, tmp_path):
    folder, applicants = logreg
    result = runner.invoke(
        app,
        [
            "score",
            str(folder),
            "--csv",
            str(applicants),
            "--out",
            str(tmp_path / "s.csv"),
            "--points-table",
            str(tmp_path / "p.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    table = _read(tmp_path / "p.csv")
    scored = {int(r["borrower_id"]): float(r["score"]) for r in _read(tmp_path / "s.csv")}
    model = load_model(folder)
    scores = score_frame(model, pd.read_csv(applicants))
    base = [float(r["points"]) for r in table if r["column"] == "(base)"]
    assert len(base) == 1
    factor = model.scorecard.factor
    w = dict(zip(model.features, model.weights["linear.weight"].ravel(), strict=True))
    kinds = set()
    for i, borrower in enumerate(scores.ids):
        total, bound = base[0], 0.005 * (len(model.used) + 1)  # each row's points are rounded to 0.01
        for name in model.used:
            col = model.card.column(name)
            value = scores.values.iloc[i][name]
            rows = [r for r in table if r["column"] == name and _in_bin(r, value, col.type)]
            assert len(rows) == 1, (name, value)
            feats = col.feature_names()
            exact = -factor * sum(w[f] * scores.x[i, model.features.index(f)] for f in feats)
            continuous = col.type == "numeric" and not col.bins
            kinds.add("continuous" if continuous else col.type if not col.bins else "binned")
            allowed = factor * abs(w[name]) / CONTINUOUS_BINS if continuous else 0.0
            assert abs(float(rows[0]["points"]) - exact) <= allowed + 0.005 + 1e-9, (name, value)
            total += float(rows[0]["points"])
            bound += allowed
        assert abs(total - scored[borrower]) <= bound + 1e-9
    assert kinds == {"continuous", "binned", "categorical"}  # the synthetic card exercises every kind of row


def _in_bin(row: dict, value, kind: str) -> bool:
    if kind == "categorical":
        return row["bin"] == str(value)
    low, high = float(row["low"]), float(row["high"])
    return low <= float(value) < high or (
        float(value) == high and not math.isinf(high) and row["bin"].startswith("range 10")
    )


def test_the_mlp_has_no_points_table(mlp, tmp_path):
    folder, _ = mlp
    result = runner.invoke(app, ["score", str(folder), "--points-table", str(tmp_path / "p.csv")])
    assert result.exit_code == 2
    assert "a points table is the logistic scorecard's" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "p.csv").exists()


def test_a_refused_column_is_dropped_as_in_training_and_changes_nothing(logreg, tmp_path):
    folder, applicants = logreg
    result, output = _score(folder, applicants, tmp_path / "with.csv")
    assert (
        result.exit_code == 0 and "gender (sensitive)" in output and "social_media_hours_per_day (non_credit)" in output
    )
    frame = pd.read_csv(applicants)
    # the same applicants with other genders and social-media hours get the same scores
    frame["gender"] = frame["gender"].iloc[::-1].to_numpy()
    frame["social_media_hours_per_day"] = 23.0
    frame.to_csv(tmp_path / "changed.csv", index=False)
    assert _score(folder, tmp_path / "changed.csv", tmp_path / "changed-scores.csv")[0].exit_code == 0
    assert (tmp_path / "changed-scores.csv").read_bytes() == (tmp_path / "with.csv").read_bytes()
    # and without those columns at all
    frame.drop(columns=["gender", "social_media_hours_per_day"]).to_csv(tmp_path / "without.csv", index=False)
    result, output = _score(folder, tmp_path / "without.csv", tmp_path / "without-scores.csv")
    assert result.exit_code == 0 and "gender" not in output
    assert (tmp_path / "without-scores.csv").read_bytes() == (tmp_path / "with.csv").read_bytes()


def _edited(applicants: Path, tmp_path: Path, edit) -> Path:
    frame = pd.read_csv(applicants)
    frame = edit(frame) if edit is not None else frame
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    return path


def _set(column, row, value):
    def edit(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        frame.loc[row, "consent"] = True  # so that the row is scored
        return frame

    return edit


@pytest.mark.parametrize(
    "edit, needle",
    [
        ("missing file", "data file not found"),
        (lambda f: f.drop(columns=["loan_amount"]), "column 'loan_amount' listed in card 'synthetic' is missing"),
        (lambda f: f.drop(columns=["consent"]), "column 'consent' listed in card 'synthetic' is missing"),
        (lambda f: f.assign(twitter_followers=1), "does not describe column 'twitter_followers'"),
        (
            _set("debt_to_income", 3, float("nan")),
            "column 'debt_to_income' has 1 NaN/missing value(s) (at data row 4)",
        ),
        (_set("num_credit_lines", 4, "many"), "column 'num_credit_lines' has non-numeric value 'many' (at data row 5)"),
        (
            _set("monthly_income", 5, 999999999.0),
            "column 'monthly_income' has value 999999999.0 outside the card's public bounds [0, 500000] (at data row 6)",
        ),
        (
            _set("home_ownership", 6, "castle"),
            "column 'home_ownership' has value 'castle' not among the card's categories (at data row 7)",
        ),
        (lambda f: f.assign(consent=False), "no applicant has consent"),
    ],
)
def test_a_bad_applicant_file_fails_with_one_line_and_writes_nothing(logreg, tmp_path, edit, needle):
    folder, applicants = logreg
    path = tmp_path / "absent.csv" if edit == "missing file" else _edited(applicants, tmp_path, edit)
    out = tmp_path / "scores.csv"
    result, output = _score(folder, path, out, "--points-table", str(tmp_path / "points.csv"))
    assert result.exit_code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], output
    assert not out.exists() and not (tmp_path / "points.csv").exists()


def test_clip_scores_an_out_of_bounds_value_as_training_encodes_it(logreg, tmp_path):
    folder, applicants = logreg
    path = _edited(applicants, tmp_path, _set("monthly_income", 5, 999999999.0))
    assert _score(folder, path, tmp_path / "clipped.csv", "--clip")[0].exit_code == 0
    at_bound = _edited(applicants, tmp_path, _set("monthly_income", 5, 500000.0))
    assert _score(folder, at_bound, tmp_path / "bound.csv")[0].exit_code == 0
    assert (tmp_path / "clipped.csv").read_bytes() == (tmp_path / "bound.csv").read_bytes()


def test_scores_are_never_written_into_the_run_folder(logreg):
    folder, applicants = logreg
    result, output = _score(folder, applicants, folder / "scores.csv")
    assert result.exit_code == 2 and "inside the run folder" in output
    assert not (folder / "scores.csv").exists()


def test_model_json_carries_what_scoring_needs(logreg):
    folder, _ = logreg
    info = json.loads((folder / "model.json").read_text())
    assert info["model"] == "logreg" and info["card"] == "synthetic"
    assert info["card_sha256"] == json.loads((folder / "manifests" / "lender_000.json").read_text())["card_sha256"]
    assert card_from_data(info["encoding"]["card"], "model.json").columns == builtin_card("synthetic").columns
    assert set(info["scorecard"]) == {"base_score", "base_odds", "pdo"}
    state = torch.load(folder / "model.pt", weights_only=True)
    for name, tensor in state.items():
        np.testing.assert_array_equal(
            np.asarray(info["weights"][name]["values"], dtype=np.float32).reshape(info["weights"][name]["shape"]),
            tensor.numpy(),
        )


@pytest.mark.parametrize("name", sorted(p.stem for p in CARDS_DIR.glob("*.toml")))
def test_a_card_as_data_reads_back_as_the_same_card(name):
    card = builtin_card(name)
    text = encoding_text(card)
    assert encoding_of(text) == text
    assert card_from_data(json.loads(text)["card"], name).columns == card.columns


@pytest.mark.parametrize(
    "text", ["public bounds and categories", "[]", '{"scheme": "x"}', '{"scheme": "x", "card": 1}']
)
def test_a_manifest_encoding_that_is_not_the_card_as_data_is_refused(text):
    # the coordinator's inspector and the verifier ask encoding_of, so model.json can always be derived
    with pytest.raises(ValueError):
        encoding_of(text)


def test_a_model_kind_without_a_scorer_is_one_line(logreg, tmp_path):
    folder, applicants = logreg
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    info = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**info, "model": "xgboost"}))
    result, output = _score(copy, applicants, tmp_path / "s.csv")
    assert result.exit_code == 2 and "model kind 'xgboost' has no scorer" in output


@pytest.mark.parametrize(
    "ensemble, needle",
    [
        (None, "holds no gbdt ensemble"),
        ({"trees": "oak"}, "gbdt ensemble is malformed"),
    ],
)
def test_a_gbdt_model_without_a_readable_ensemble_is_one_line(gbdt, tmp_path, ensemble, needle):
    folder, applicants = gbdt
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    info = json.loads((copy / "model.json").read_text())
    assert isinstance(info["ensemble"], dict)  # the honest run's model.json holds its trees
    (copy / "model.json").write_text(json.dumps({**info, "ensemble": ensemble}))
    result, output = _score(copy, applicants, tmp_path / "s.csv")
    assert result.exit_code == 2 and needle in output and "Traceback" not in output
    assert not (tmp_path / "s.csv").exists()


# ---- against the coordinator: model.json is checked by the verifier -----------------------------------------------


@pytest.fixture
def folder(logreg, tmp_path):
    source, _ = logreg
    return copy_run(source, tmp_path / "run")


def test_model_json_weights_rewritten_and_re_hashed_by_the_coordinator_fail_verification(folder, logreg, tmp_path):
    info = json.loads((folder / "model.json").read_text())
    info["weights"]["linear.bias"]["values"][0] += 3.0  # everyone scores as a worse risk
    tampered = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    Forger(folder).write(entries_of(folder), tamper={"model.json": tampered})
    with pytest.raises(VerificationFailed) as info_exc:
        verify_run(folder, f"{folder}-registry.json")
    assert info_exc.value.check == "files" and "model.json" in str(info_exc.value)
    result, output = _score(folder, logreg[1], tmp_path / "s.csv", "--registry", f"{folder}-registry.json")
    assert result.exit_code == 2 and "does not verify" in output and not (tmp_path / "s.csv").exists()


def test_a_lender_signing_another_encoding_fails_verification(folder):
    entries = entries_of(folder)
    manifest = next(e for e in entries if e["type"] == "lender_manifest" and e["body"]["lender"] == 1)
    encoding = json.loads(manifest["body"]["encoding"])
    column = next(c for c in encoding["card"]["columns"] if c["name"] == "monthly_income")
    column["bounds"] = [0, 5000]  # the colluding lender scaled incomes otherwise
    manifest["body"]["encoding"] = json.dumps(encoding, sort_keys=True)
    Forger(folder).colluding_with(1).write(entries)
    with pytest.raises(VerificationFailed) as info:
        verify_run(folder, f"{folder}-registry.json")
    assert info.value.check == "manifests" and "encoding differs from lender 0's" in str(info.value)


def test_an_honest_run_still_verifies_and_scores_with_the_registry(folder, logreg, tmp_path):
    verify_run(folder, f"{folder}-registry.json")
    result, output = _score(folder, logreg[1], tmp_path / "s.csv", "--registry", f"{folder}-registry.json")
    assert result.exit_code == 0, output
    assert card_data(load_model(folder).card)["name"] == "synthetic"


def test_without_the_id_column_each_applicant_is_named_by_its_data_row_from_1(logreg, tmp_path):
    """The `row` of scores.csv counts data rows from 1 after the header, as the error messages do."""
    folder, applicants = logreg
    frame = pd.read_csv(applicants)
    frame.drop(columns=["borrower_id"]).to_csv(tmp_path / "no_ids.csv", index=False)
    result, output = _score(folder, tmp_path / "no_ids.csv", tmp_path / "s.csv")
    assert result.exit_code == 0, output
    rows = [int(r["row"]) for r in _read(tmp_path / "s.csv")]
    assert rows == [i + 1 for i in np.flatnonzero(frame["consent"].to_numpy())]
