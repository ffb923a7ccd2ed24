"""The benchmark grid: the quick grid end to end, a well-formed CSV, resumption, the generated tables."""

import csv
import math

import pytest
from typer.testing import CliRunner

from benchmarks.bench import COLUMNS, Cell, config_for, grid
from benchmarks.constants import CONSTANTS, headline_split
from fedcredit.cli import app
from tests.conftest import shared_or_skip

runner = CliRunner()


def test_every_method_gets_the_same_budget_of_local_steps():
    cells = grid(["taiwan_default"], [0])
    # gbdt boosts (rounds of trees, no local epochs) and hgb is scikit-learn's: neither has local steps
    configs = {c.method: config_for(c) for c in cells if math.isinf(c.epsilon) and c.method not in ("gbdt", "hgb")}
    budget = {(cfg.rounds * cfg.local_epochs, cfg.batch_size, cfg.model) for cfg in configs.values()}
    assert len(budget) == 1
    c = CONSTANTS["taiwan_default"]
    assert budget == {(c.rounds * c.local_epochs, c.batch_size, c.model)}
    # The federation and local-only share the local optimizer; pooled takes its own searched settings, same family.
    assert configs["local"].learning_rate == configs["fedavg"].learning_rate == c.learning_rate
    assert all(getattr(configs["pooled"], k) == v for k, v in c.pooled)


def test_full_grid_covers_the_protocol():
    cells = grid(list(CONSTANTS), [0, 1, 2])
    partitions = {c.partition_label for c in cells if c.dataset == "taiwan_default"}
    assert partitions == {"iid", "dirichlet(0.5)", "dirichlet(0.1)", "quantity(0.5)"}
    assert {c.partition_label for c in cells if c.dataset == "synthetic"} == {"natural"}
    fed = {(c.method, c.epsilon) for c in cells if c.method.startswith("fed")}
    assert len(fed) == 3 * 4  # three strategies x (no DP, 1, 3, 8)
    assert all(math.isinf(c.epsilon) for c in cells if c.method in ("pooled", "local"))
    assert len({c.key() for c in cells}) == len(cells)


def test_quick_grid_end_to_end_and_resume(tmp_path, fixture_dir):
    data = fixture_dir("german_credit")
    out = tmp_path / "bench"
    # An explicit delta: the fixture's lenders have about 20 training records, too few for the default delta.
    args = [
        "bench",
        "--quick",
        "--datasets",
        "synthetic,german_credit",
        "--data-dir",
        str(data),
        "--set",
        "lenders=2",
        "--set",
        "delta=1e-4",
        "--output-dir",
        str(out),
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == COLUMNS
    for dataset in ("synthetic", "german_credit"):
        mine = [r for r in rows if r["dataset"] == dataset]
        assert {r["method"] for r in mine} == {"pooled", "local", "fedavg"}
        assert any(r["lender"] == "pooled" and r["test_set"] == "pooled" for r in mine if r["method"] == "pooled")
        assert {r["lender"] for r in mine if r["method"] == "local" and r["test_set"] == "pooled"} == {"0", "1"}
        assert {r["epsilon"] for r in mine if r["method"] == "fedavg"} == {"inf", "3"}
        for r in mine:
            auc = float(r["auc"])
            assert math.isnan(auc) or 0.0 <= auc <= 1.0
        dp = [r for r in mine if r["method"] == "fedavg" and r["epsilon"] == "3"]
        assert all(0 < float(r["epsilon_spent"]) <= 3.0 for r in dp)
    synthetic_pooled = next(
        r for r in rows if r["dataset"] == "synthetic" and r["method"] == "pooled" and r["lender"] == "pooled"
    )
    assert float(synthetic_pooled["auc"]) > 0.6
    md = (out / "RESULTS.md").read_text()
    assert "fedcredit bench --quick" in md and "| synthetic | natural |" in md
    assert (out / "auc_synthetic.png").stat().st_size > 0
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "0 to run" in again.output
    with (out / "results.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    # Cells run again beside the file's other rows: the report written then is the one the file itself gives (a
    # rerun with nothing to run); before, the new rows' numbers beside the file's strings dropped the lenders
    # beating their own local model from the new cells' row.
    kept = [r for r in rows if not (r["dataset"] == "german_credit" and r["method"] == "fedavg")]
    with (out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(kept)
    mixed = runner.invoke(app, args)
    assert mixed.exit_code == 0 and "2 to run" in mixed.output, mixed.output
    written = (out / "RESULTS.md").read_text()
    assert runner.invoke(app, args).exit_code == 0
    assert (out / "RESULTS.md").read_text() == written
    assert "| german_credit | fedavg |" in written and "- / - |" not in written


def test_bench_bad_options_are_clear_errors(tmp_path):
    for args, needle in (
        (["--datasets", "lending_club"], "unknown dataset"),
        (["--methods", "fedsgd"], "unknown method"),
        (["--set", "rounds=zero"], "expects int"),
    ):
        result = runner.invoke(app, ["bench", "--quick", "--output-dir", str(tmp_path / "b"), *args])
        assert result.exit_code == 2 and needle in result.output, result.output


def test_cell_keys_match_csv_rows():
    cell = Cell("synthetic", "natural", 0.5, "fedavg", 3.0, 1)
    assert cell.key() == ("synthetic", "natural", "fedavg", "3", "1")


def test_the_hgb_limit_is_fitted_and_scored_on_the_same_split_as_the_other_cells(monkeypatch):
    """hgb (the headline's limit) must see exactly the records pooled training sees, and be scored on exactly the
    held-out and own test records every other cell is scored on: same arrays, row for row."""
    import numpy as np

    from benchmarks import bench as bench_module

    fitted, scored = {}, {}
    real_scores, real_hgb, real_alone = bench_module._scores, bench_module.best_pooled_model, bench_module.train_alone
    method = {"now": ""}

    def scores(model, x, y):
        scored.setdefault(method["now"], []).append((x.copy(), y.copy()))
        return real_scores(model, x, y)

    def hgb(dataset, x, y, seed):
        fitted["hgb"] = (x.copy(), y.copy())
        return real_hgb(dataset, x, y, seed)

    def alone(cfg, x, y, seed):
        fitted.setdefault("pooled", (x.copy(), y.copy()))
        return real_alone(cfg, x, y, seed)

    monkeypatch.setattr(bench_module, "_scores", scores)
    monkeypatch.setattr(bench_module, "best_pooled_model", hgb)
    monkeypatch.setattr(bench_module, "train_alone", alone)
    overrides = {"records": 3000, "rounds": 2, "lenders": 3}
    for m in ("hgb", "pooled", "fedavg"):
        method["now"] = m
        cell = Cell("synthetic", "natural", 0.5, m, math.inf, 0)
        rows = bench_module.run_cell(cell, config_for(cell, overrides=overrides))
        assert [r["lender"] for r in rows] == ["pooled", 0, 1, 2]
    for name in ("hgb", "fedavg"):
        assert len(scored[name]) == len(scored["pooled"]) == 4  # the held-out test, then each lender's own test
        for (x, y), (px, py) in zip(scored[name], scored["pooled"], strict=True):
            assert np.array_equal(x, px) and np.array_equal(y, py)
    assert np.array_equal(fitted["hgb"][0], fitted["pooled"][0]) and np.array_equal(
        fitted["hgb"][1], fitted["pooled"][1]
    )


def test_a_quick_cell_with_adamw_and_the_limit_runs_end_to_end(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--quick", "--methods", "hgb,pooled,fedavg", "--epsilons", "3", "--output-dir", str(out)]
    for setting in ("model=mlp", "hidden=16", "optimizer=adamw", "lr-schedule=cosine", "learning-rate=0.01"):
        args += ["--set", setting]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with (out / "results.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["lender"] == "pooled"]
    auc = {r["method"]: float(r["auc"]) for r in rows}
    assert set(auc) == {"hgb", "pooled", "fedavg"}
    assert auc["hgb"] > 0.7 and auc["pooled"] > 0.7 and auc["fedavg"] > 0.6
    assert 0 < float(next(r for r in rows if r["method"] == "fedavg")["epsilon_spent"]) <= 3.0
    md = (out / "RESULTS.md").read_text()
    assert "best pooled: HGB (the limit)" in md and "Flower 1." in md
    # the headline row: the federated AUC, then its gaps to the limit and to the same-family pooled model
    f, h, p = auc["fedavg"], auc["hgb"], auc["pooled"]
    assert f"| synthetic | fedavg | - | {f:.4f} ({f - h:+.4f} / {f - p:+.4f}) |" in md


def test_the_gbdt_cells_run_at_every_epsilon_and_a_build_without_gbdt_skips_them_with_its_reason(tmp_path, monkeypatch):
    from benchmarks import constants
    from federation import config
    from federation.gbdt.boosting import GbdtParams

    assert "gbdt" in config.MODELS and "gbdt" in constants.DEFAULT_METHODS
    cells = grid(["synthetic"], [0], ["gbdt"], [1.0, 3.0])
    assert {(c.method, c.epsilon) for c in cells} == {("gbdt", 1.0), ("gbdt", 3.0)}
    assert {(config_for(c).model, config_for(c).rounds) for c in cells} == {("gbdt", GbdtParams().rounds)}
    # A build without the model (federation.config.MODELS without gbdt) skips its cells and says why.
    monkeypatch.setattr(config, "MODELS", tuple(m for m in config.MODELS if m != "gbdt"))
    assert "not in this build" in constants.unavailable("gbdt") and constants.unavailable("fedavg") == ""
    assert {c.method for c in grid(["synthetic"], [0], ["pooled", "gbdt"], [3.0])} == {"pooled"}
    only = runner.invoke(app, ["bench", "--quick", "--methods", "gbdt", "--output-dir", str(tmp_path / "g")])
    assert only.exit_code == 2 and "gbdt: --model gbdt is not in this build" in only.output, only.output


def test_server_side_optimizers_are_flowers():
    from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedYogi

    from federation.config import RunConfig
    from server.strategies import make_strategy

    for name, kind in (("fedadam", FedAdam), ("fedyogi", FedYogi), ("fedadagrad", FedAdagrad)):
        strategy = make_strategy(RunConfig(strategy=name, server_learning_rate=0.03, lenders=3).validated())
        assert type(strategy) is kind and strategy.eta == 0.03


def test_the_search_tools_train_on_validation_splits_and_reach_a_real_model():
    """benchmarks/search.py: the validation split is disjoint from what is fitted and keeps the label rate; the
    simulated DP FedAvg the federated search scores trains a model that ranks (and noise changes it)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from benchmarks.search import markdown, simulated_dp_fedavg, validation_split
    from federation.config import RunConfig
    from federation.model import predict_proba

    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, 4)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] + rng.normal(size=900) > 0.8).astype(np.float32)
    ids = np.arange(900, dtype=np.float32)
    x_fit, x_val, _, y_val = validation_split(np.column_stack([x, ids]), y)
    assert not set(x_fit[:, -1]) & set(x_val[:, -1]) and len(x_val) == 180
    assert abs(y_val.mean() - y.mean()) < 0.01
    cfg = RunConfig(model="logreg", rounds=3, batch_size=50, learning_rate=0.5, clip_norm=1.0).validated()
    lenders = [(x[i::3], y[i::3]) for i in range(3)]
    aucs = [roc_auc_score(y, predict_proba(simulated_dp_fedavg(cfg, lenders, 3.0, seed), x)) for seed in (0, 1)]
    assert min(aucs) > 0.75 and aucs[0] != aucs[1]
    rows = [{"dataset": "d", "search": "fed", "candidate": "model=logreg", "validation_auc": "0.7000", "seconds": "1"}]
    assert "Command: `python -m benchmarks.search x`" in markdown(rows, "python -m benchmarks.search x")


@pytest.mark.parametrize("dataset", ["german_credit", "spanish_credit"])
def test_the_headline_splits_of_the_small_datasets_pass_the_delta_rule_at_every_seed(dataset):
    """The bench's delta for each dataset gives every lender of the headline split (Dirichlet 0.5, seeds 0-2) a
    meaningful guarantee, so no DP cell is refused: before spanish_credit's explicit delta its seed 1 was (a lender with
    12 training records, below the default rule's 65)."""
    from federation.data import load_lender
    from federation.privacy.limits import check_delta

    data_dir = str(shared_or_skip(dataset))
    for seed in (0, 1, 2):
        cfg = config_for(Cell(dataset, "dirichlet", 0.5, "fedavg", 3.0, seed), data_dir)
        for lender in range(cfg.lenders):
            check_delta(len(load_lender(cfg, lender).y_train), cfg.delta, f"{dataset} seed {seed} lender {lender}")


@pytest.mark.parametrize("dataset", sorted(CONSTANTS))
def test_the_gbdt_cells_take_their_datasets_own_tuning_and_only_the_gbdt_cells_do(dataset):
    """A dataset's gbdt settings (constants.py `gbdt`, from benchmarks/gbdt_tuning.py --dataset) reach its gbdt cells'
    run configuration, every name a real RunConfig option, and leave the other methods' cells alone."""
    from federation.config import RunConfig

    c = CONSTANTS[dataset]
    gbdt = config_for(Cell(dataset, *headline_split(dataset), "gbdt", 3.0, 0))
    fedavg = config_for(Cell(dataset, *headline_split(dataset), "fedavg", 3.0, 0))
    defaults = RunConfig()
    for name, value in c.gbdt:
        assert getattr(gbdt, name) == value, name
        if name.startswith("gbdt_"):
            assert getattr(fedavg, name) == getattr(defaults, name), name  # unused by fedavg, and unchanged
    assert fedavg.rounds == c.rounds and fedavg.model == c.model


def test_a_tuned_number_of_gbdt_rounds_survives_the_count_round(monkeypatch):
    """A dataset's gbdt constants may set the rounds; with noisy-quantile candidates round 1 is the count release, so
    the run has one round more than the tuned trees' rounds (it had the default 50 + 1 whatever the tuning said)."""
    import dataclasses

    import benchmarks.bench as bench_module

    tuned = dataclasses.replace(
        CONSTANTS["synthetic"], gbdt=(("rounds", 100), ("gbdt_split_candidates", "noisy_quantiles"))
    )
    monkeypatch.setitem(bench_module.CONSTANTS, "synthetic", tuned)
    assert config_for(Cell("synthetic", "natural", 0.5, "gbdt", 3.0, 0)).rounds == 101
    untuned = dataclasses.replace(tuned, gbdt=(("gbdt_split_candidates", "noisy_quantiles"),))
    monkeypatch.setitem(bench_module.CONSTANTS, "synthetic", untuned)
    assert config_for(Cell("synthetic", "natural", 0.5, "gbdt", 3.0, 0)).rounds == bench_module.GBDT_ROUNDS + 1


def test_results_md_carries_the_secure_cells_first_section_before_the_performance(tmp_path, monkeypatch):
    """RESULTS.md states the cells measured under a trust assumption (results/gbdt_secure_*), each folder's own
    command, setting and table, apart from the headline's trust-no-one cells and before the performance results."""
    import benchmarks.report as report

    monkeypatch.setattr(report, "results_markdown", lambda rows, command, skipped=None: "# headline\n")
    (tmp_path / "results" / "gbdt_secure_x").mkdir(parents=True)
    (tmp_path / "results" / "gbdt_secure_x" / "README.md").write_text(
        "# X under secure aggregation\n\n```bash\nfedcredit bench --set secure-aggregation=true\n```\n\n| a | 0.7760 |\n"
        "\n## Before: an older setting\n\n| a | 0.7714 |\n"
    )
    (tmp_path / "results" / "perf_cost.md").write_text("speed table\n")
    report.write_results_md([], "cmd", tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    secure = text.index("## Under secure aggregation")
    assert text.index("# headline") < secure < text.index("### gbdt_secure_x") < text.index("## Performance")
    assert "fedcredit bench --set secure-aggregation=true" in text and "| a | 0.7760 |" in text
    assert "0.7714" not in text and "X under secure aggregation" not in text  # the first section only, untitled
    assert "speed table" in text
