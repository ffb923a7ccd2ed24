"""The benchmark grid: the quick grid end to end, a well-formed CSV, resumption, the generated tables."""

import csv
import math

from typer.testing import CliRunner

from benchmarks.bench import COLUMNS, Cell, config_for, grid
from benchmarks.constants import CONSTANTS
from fedcredit.cli import app

runner = CliRunner()


def test_every_method_gets_the_same_budget_of_local_steps():
    cells = grid(["taiwan_default"], [0])
    configs = {c.method: config_for(c) for c in cells if math.isinf(c.epsilon)}
    budget = {(cfg.rounds * cfg.local_epochs, cfg.batch_size, cfg.learning_rate, cfg.model) for cfg in configs.values()}
    assert len(budget) == 1
    c = CONSTANTS["taiwan_default"]
    assert budget == {(c.rounds * c.local_epochs, c.batch_size, c.learning_rate, c.model)}


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
