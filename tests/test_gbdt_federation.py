"""`--model gbdt` through the whole system: lenders, ClientApp, ServerApp, ledger, verifier, budgets, lender-held
limits, report and CLI. Each privacy or integrity claim is tested by the attack that would succeed if it were false.

Small synthetic federations and few rounds; the algorithm itself (sums, sensitivity, Newton step) is tested in
tests/test_gbdt_core.py.
"""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clients.app import train as lender_train
from fedcredit.cli import app
from fedcredit.runner import run
from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import config_hash
from federation.audit_trail.verify import VerificationFailed, verify_run
from federation.config import RunConfig
from federation.data import load_lender
from federation.errors import ConfigError
from federation.gbdt.binning import bin_features
from federation.gbdt.boosting import simulate
from federation.gbdt.structure import random_trees
from federation.gbdt_release import LEAF_SUMS, exact_leaf_sums
from federation.model import Scorecard, model_for, predict_proba
from federation.privacy.accountant import epsilon
from federation.privacy.events import PrivacyEvent
from federation.privacy.noise import SeededRandomness
from federation.tree_model import gbdt_params, round_trees
from tests.forge import Forger, copy_run, entries_of, restate_privacy
from tests.lender_kit import make_lender, message, spent

GBDT = RunConfig(
    records=3000,
    lenders=3,
    rounds=3,
    epsilon=3.0,
    model="gbdt",
    gbdt_trees_per_round=2,
    gbdt_depth=3,
    gbdt_bins=16,
    engine="inprocess",
)


def _quiet(summary) -> None:
    pass


def _model_arrays(folder) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in torch.load(folder / "model.pt", weights_only=True).items()}


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    """`fedcredit run --model gbdt` on the command line: DP, each lender's own noise."""
    folder = tmp_path_factory.mktemp("gbdt") / "run"
    options = ["--model", "gbdt", "--records", "3000", "--lenders", "3", "--rounds", "3", "--epsilon", "3"]
    options += ["--gbdt-trees-per-round", "2", "--gbdt-depth", "3", "--gbdt-bins", "16"]
    result = CliRunner().invoke(app, ["run", *options, "--output-dir", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def copy_of(dp_run, tmp_path):
    return copy_run(dp_run, tmp_path / "run")


def _fails(folder, check, contains=""):
    with pytest.raises(VerificationFailed) as info:
        verify_run(folder, f"{folder}-registry.json")
    assert info.value.check == check, str(info.value)
    assert contains in str(info.value), str(info.value)


# ---- the model the federation grows ---------------------------------------------------------------------


def test_a_noise_free_run_through_flower_grows_exactly_the_reference_ensemble(tmp_path):
    cfg = GBDT.replace(dp=False, output_dir=str(tmp_path / "run"))
    folder = run(cfg, on_round=_quiet)
    lenders = [load_lender(cfg, i) for i in range(cfg.lenders)]
    reference = simulate(
        [(bin_features(d.x_train, cfg.gbdt_bins), d.y_train) for d in lenders],
        gbdt_params(cfg),
        np.random.default_rng(cfg.seed),  # the coordinator's structure generator
        noise=False,
    )
    arrays = _model_arrays(folder)
    assert int(arrays["grown"][0]) == len(reference.trees) == cfg.rounds * cfg.gbdt_trees_per_round
    for i, tree in enumerate(reference.trees):
        assert np.array_equal(arrays["features"][i], tree.features)
        assert np.array_equal(arrays["thresholds"][i], tree.thresholds)
        assert np.array_equal(arrays["values"][i], tree.values), i  # bit for bit
    assert np.abs(arrays["values"]).max() > 0  # it learnt something
    # and the run's model scores as the reference does (the score path: model.pt through model_for)
    model = model_for(cfg, len(lenders[0].features))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    x = lenders[0].x_test
    with torch.no_grad():
        logit = model(torch.as_tensor(x, dtype=torch.float32)).numpy()
    assert np.allclose(logit, reference.predict_logit(bin_features(x, cfg.gbdt_bins)), rtol=0, atol=1e-12)
    card = Scorecard()  # probability of default to points, as for the other models
    points = card.score(predict_proba(model, x))
    assert np.allclose(points, card.score(reference.predict_proba(bin_features(x, cfg.gbdt_bins))), atol=1e-9)


def test_a_gbdt_run_writes_report_and_model_and_verifies(dp_run):
    result = CliRunner().invoke(app, ["verify", str(dp_run), "--registry", f"{dp_run}-registry.json"])
    assert result.exit_code == 0, result.output
    assert {"report.html", "report.json", "model.pt", "model.json"} <= {p.name for p in dp_run.iterdir()}
    assert json.loads((dp_run / "model.json").read_text())["model"] == "gbdt"
    events = [json.loads(line) for line in (dp_run / "privacy_events.jsonl").read_text().splitlines()]
    assert len(events) == 9 and {(e["sample_rate"], e["steps"], e["clip_norm"]) for e in events} == {
        (1.0, 1, math.sqrt(2))
    }
    privacy = json.loads((dp_run / "privacy.json").read_text())
    for unit in privacy["units"].values():
        assert unit["epsilon"] <= 3.0 and unit["rounds_released"] == 3
    assert int(_model_arrays(dp_run)["grown"][0]) == 6
    summary = " ".join(json.loads((dp_run / "report.json").read_text())["summary"])
    assert "gradient-boosted trees" in summary and "each lender added the full noise itself" in summary


# ---- a coordinator rewriting the ledger ------------------------------------------------------------------


def test_a_forged_lower_noise_multiplier_is_caught(copy_of):
    entries = entries_of(copy_of)
    for e in entries:  # lender 0 "added" a tenth of the noise: its epsilon would be far above its budget
        if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 0:
            e["body"]["events"][0]["noise_multiplier"] /= 10
    Forger(copy_of).write(restate_privacy(entries))
    _fails(copy_of, "signature")  # the lender signed its event: the coordinator cannot change it


def test_a_colluding_lender_claiming_sampling_in_a_gbdt_release_is_caught(copy_of):
    """A gbdt release is over every record: a lender (with the coordinator) that records rate 0.01 to shrink its
    epsilon, and restates everything consistently, still fails."""
    entries = entries_of(copy_of)
    events = []
    for e in entries:
        if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 0:
            e["body"]["events"][0]["sample_rate"] = 0.01
            events.append(PrivacyEvent.from_dict(e["body"]["events"][0]))
            e["body"]["epsilon"] = epsilon(events, e["body"]["delta"])
    Forger(copy_of).colluding_with(0).write(restate_privacy(entries))
    _fails(copy_of, "privacy events", "rate 1, 1 step")


def test_a_dropped_round_is_caught(copy_of):
    entries = entries_of(copy_of)
    starts = [i for i, e in enumerate(entries) if e["type"] == L.ROUND_STARTED]
    ends = [i for i, e in enumerate(entries) if e["type"] == L.ROUND_FINISHED]
    kept = entries[: starts[-1]] + entries[ends[-1] + 1 :]
    kept[-1]["body"]["rounds_completed"] -= 1
    Forger(copy_of).write(restate_privacy(kept))
    _fails(copy_of, "completeness", "counts 3 releases")


# ---- the lender's own limits, before any release -----------------------------------------------------------


def _round_one_model(cfg: RunConfig, n_features: int):
    """What an honest coordinator sends in round 1: the empty ensemble with round 1's random structures."""
    model = model_for(cfg, n_features)
    trees = random_trees(
        np.random.default_rng(cfg.seed), cfg.gbdt_trees_per_round, cfg.gbdt_depth, n_features, cfg.gbdt_bins
    )
    rows = round_trees(cfg, 1)
    model.features[rows] = torch.as_tensor(np.stack([t.features for t in trees]))
    model.thresholds[rows] = torch.as_tensor(np.stack([t.thresholds for t in trees]))
    return model


@pytest.mark.parametrize(
    "ask, limit",
    [({"noise_multiplier": 0.05}, "min_noise_multiplier"), ({"epsilon": 40.0}, "max_epsilon")],
    ids=["noise below the minimum", "epsilon over the lifetime maximum"],
)
def test_a_request_outside_the_lenders_policy_is_refused_before_any_release(tmp_path, ask, limit):
    context, home = make_lender(tmp_path / "lender", GBDT, 0)  # its policy: GBDT's budget, the default noise floor
    evil = GBDT.replace(**ask)
    model = _round_one_model(evil, len(load_lender(GBDT, 0).features))
    reply = lender_train(message(evil, 1, model=model), context)
    body = json.loads(reply.content["attestation"]["body"])
    assert body["type"] == "lender_refusal" and body["limit"] == limit, body
    assert "arrays" not in reply.content and spent(home, evil)["releases"] == 0


def test_more_trees_a_round_than_the_lenders_sensitivity_limit_is_refused(tmp_path):
    """The lender's clip limit bounds the leaf sums' sensitivity sqrt(trees per round)."""
    context, home = make_lender(tmp_path / "lender", GBDT, 0)  # max_clip_norm = sqrt(2)
    evil = GBDT.replace(gbdt_trees_per_round=8)
    model = _round_one_model(evil, len(load_lender(GBDT, 0).features))
    body = json.loads(lender_train(message(evil, 1, model=model), context).content["attestation"]["body"])
    assert body["type"] == "lender_refusal" and body["limit"] == "max_clip_norm", body
    assert spent(home, evil)["releases"] == 0


# ---- the noise is the lender's own ----------------------------------------------------------------------


def _sent_leaf_sums(folder, lender: int) -> np.ndarray:
    cfg = RunConfig.from_record(entries_of(folder)[0]["body"]["config"])
    state = folder.parent / f"{folder.name}-lenders" / f"lender_{lender:03d}" / "state" / "sent"
    sent = sorted((state / config_hash(cfg.to_record())[:32]).glob("round-1-*.json"))
    from federation.audit_trail import checkpoint

    return checkpoint.decode_arrays(json.loads(sent[0].read_text())["arrays"])[LEAF_SUMS]


def _noise_from_the_seed(folder, lender: int = 0) -> float:
    """The attack: the coordinator knows the config, its structures, even the lender's records, and regenerates
    the noise from the run seed as a seeded lender draws it; returns how far its guess of the exact sums is."""
    cfg = RunConfig.from_record(entries_of(folder)[0]["body"]["config"])
    data = load_lender(cfg, lender)
    model = _round_one_model(cfg, len(data.features))
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    exact = exact_leaf_sums(cfg, arrays, len(data.features), 1, data.x_train, data.y_train)
    sigma = json.loads((folder / "privacy.json").read_text())["units"][str(lender)]["noise_multiplier"]
    seeded = SeededRandomness((cfg.seed * 1_000_003 + lender * 1009 + 1) % 2**31)
    noise = sigma * math.sqrt(cfg.gbdt_trees_per_round) * seeded.normal((exact.size,)).numpy().reshape(exact.shape)
    return float(np.abs(_sent_leaf_sums(folder, lender) - noise - exact).max())


def test_the_coordinator_cannot_recompute_a_gbdt_release_noise(dp_run, tmp_path):
    seeded = run(GBDT.replace(reproducible_noise_not_private=True, output_dir=str(tmp_path / "s")), on_round=_quiet)
    assert _noise_from_the_seed(seeded) < 1e-9  # the attack works where the noise is seeded: the test can fail
    assert _noise_from_the_seed(dp_run) > 1.0  # and recovers nothing from a default run


# ---- budgets ---------------------------------------------------------------------------------------------


def test_budgets_stop_the_boosting_before_an_overrun(tmp_path):
    """A fixed noise multiplier the budget affords for only some of the rounds: every lender declines the round
    that would overrun, the run stops there, and it verifies."""
    sigma, budget, rounds = 2.0, 2.0, 6
    cfg = GBDT.replace(rounds=rounds, noise_multiplier=sigma, epsilon=budget, output_dir=str(tmp_path / "run"))
    folder = run(cfg, on_round=_quiet)
    privacy = json.loads((folder / "privacy.json").read_text())
    for lender, unit in privacy["units"].items():
        event = PrivacyEvent(int(lender), 1, sigma, 1.0, 1, math.sqrt(2))
        affordable = max(r for r in range(rounds + 1) if epsilon([event] * r, unit["delta"]) <= budget)
        assert 0 < affordable < rounds  # the test's premise: the budget binds
        assert unit["rounds_released"] == affordable and unit["epsilon"] <= budget
    config = json.loads((folder / "config.json").read_text())
    assert config["rounds-completed"] < rounds
    refusals = [e["body"] for e in entries_of(folder) if e["type"] == L.LENDER_REFUSAL]
    assert refusals and {r["limit"] for r in refusals} == {"budget"}
    verify_run(folder, f"{folder}-registry.json")


# ---- configuration ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, words",
    [
        ({"strategy": "fedadam"}, "strategy 'fedadam'"),
        ({"dp_level": "lender", "delta": 1e-3}, "dp-level 'record'"),
        ({"gbdt_depth": 0}, "gbdt-depth"),
        ({"gbdt_bins": 1}, "gbdt-bins"),
    ],
)
def test_what_gbdt_does_not_combine_with_is_one_clear_line(change, words):
    with pytest.raises(ConfigError, match=words):
        GBDT.replace(**change)


def test_a_coordinator_that_sets_other_leaf_values_than_the_sums_give_is_caught(tmp_path, monkeypatch):
    """The coordinator runs the federation honestly except that it doubles the leaf values of every round (the
    lenders score and sign whatever model it sends): the ledger's own leaf sums give another model."""
    import server.gbdt_strategy as strategy

    honest = strategy.leaf_values
    monkeypatch.setattr(strategy, "leaf_values", lambda *args: 2 * honest(*args))
    folder = run(GBDT.replace(rounds=2, output_dir=str(tmp_path / "run")), on_round=_quiet)
    _fails(folder, "model", "round 1's model is not the one")


def test_the_ensemble_in_model_json_is_the_model_file_and_a_forged_leaf_sum_is_caught(copy_of):
    described = json.loads((copy_of / "model.json").read_text())["ensemble"]
    arrays = _model_arrays(copy_of)
    assert len(described["trees"]) == int(arrays["grown"][0])
    assert [t["values"] for t in described["trees"]] == arrays["values"][: len(described["trees"])].tolist()
    entries = entries_of(copy_of)
    agg = next(e for e in entries if e["type"] == L.AGGREGATE)
    agg["body"]["gbdt"]["released"]["0"][0][0][0] += 1.0  # one leaf sum of lender 0, as if it had sent it
    Forger(copy_of).write(entries)
    _fails(copy_of, "model", "lender 0's recorded leaf sums are not the ones it signed")


# ---- the planner ---------------------------------------------------------------------------------------------


def test_plan_model_gbdt_gives_the_noise_a_lender_of_the_run_calibrated(dp_run):
    """`fedcredit plan --model gbdt` describes the run's mechanism: R unsampled Gaussian releases. Its sigma is the
    one each lender of the run calibrated, and its epsilon is dp_accounting's Gaussian mechanism composed R times."""
    import dp_accounting

    unit = json.loads((dp_run / "privacy.json").read_text())["units"]["0"]
    records = json.loads((dp_run / "manifests" / "lender_000.json").read_text())["train_records"]
    options = ["--records-per-lender", str(records), "--rounds", "3", "--delta", repr(unit["delta"]), "--epsilons", "3"]
    result = CliRunner().invoke(app, ["plan", "--model", "gbdt", *options, "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["noise_multiplier"] == unit["noise_multiplier"] and (row["sample_rate"], row["steps"]) == (1.0, 3)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(row["noise_multiplier"]), 3)
    assert row["epsilon_rdp"] == pytest.approx(accountant.get_epsilon(unit["delta"]), rel=0.01)
    refused = CliRunner().invoke(app, ["plan", "--model", "gbdt", "--dp-level", "lender", "--lenders", "9"])
    assert refused.exit_code == 2 and "dp-level 'record'" in refused.output


# ---- the benchmark -------------------------------------------------------------------------------------------


def test_a_quick_gbdt_bench_runs_the_pooled_limit_and_a_private_federated_cell(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--quick", "--methods", "pooled,fedavg", "--epsilons", "3", "--output-dir", str(out)]
    args += ["--set", "model=gbdt", "--set", "lenders=3", "--set", "rounds=8"]  # 8 rounds of 5 trees of depth 4
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    import csv

    with (out / "results.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["lender"] == "pooled"]
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"pooled", "fedavg"}
    assert float(by_method["pooled"]["auc"]) > 0.65  # the noise-free pooled ensemble learns the synthetic market
    assert 0 < float(by_method["fedavg"]["epsilon_spent"]) <= 3.0
    assert 0.0 <= float(by_method["fedavg"]["auc"]) <= 1.0


def test_a_recorded_structure_other_than_the_one_the_lenders_were_sent_is_caught(copy_of):
    """Each lender signs the digest of the request it answered: the ledger cannot claim the sums were for other
    trees than the ones the lenders computed them on."""
    entries = entries_of(copy_of)
    agg = next(e for e in entries if e["type"] == L.AGGREGATE)
    record = agg["body"]["gbdt"]
    record["thresholds"][0][0] = (record["thresholds"][0][0] + 1) % (GBDT.gbdt_bins - 1)
    Forger(copy_of).write(entries)
    _fails(copy_of, "model", "signed a request for another model than the round's recorded structure gives")
