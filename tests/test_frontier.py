"""The privacy-utility frontier (benchmarks/frontier.py, `fedcredit sweep`): every line it promises is run and
labelled by what it is, gbdt beside the federation's own model, and bad options fail in one line."""

from __future__ import annotations

import csv
import math

import pytest
from typer.testing import CliRunner

from benchmarks.frontier import markdown, method_name, summarize, sweep
from fedcredit.cli import app
from federation.config import RunConfig

BASE = RunConfig(records=1500, lenders=3, rounds=2, epsilon=3.0)
GBDT = BASE.replace(model="gbdt", rounds=3, gbdt_trees_per_round=2, gbdt_depth=2, gbdt_bins=8)


@pytest.fixture(scope="module")
def frontier(tmp_path_factory):
    out = tmp_path_factory.mktemp("frontier")
    rows = sweep(BASE, [3.0, math.inf], [0], out, log=lambda line: None, command="fedcredit sweep ...", gbdt=GBDT)
    return out, rows


def test_every_line_is_run_and_labelled_by_its_method(frontier):
    out, rows = frontier
    cells = {(r["method"], r["epsilon"]) for r in rows}
    assert cells == {
        ("hgb", math.inf),
        ("pooled", math.inf),
        ("local_mean", math.inf),
        ("local_worst", math.inf),
        ("fedavg", 3.0),
        ("fedavg", math.inf),
        ("gbdt", 3.0),
        ("gbdt", math.inf),
    }
    with open(out / "frontier.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)  # written as it went, every row
    assert (out / "frontier.png").stat().st_size > 0


def _table(rows) -> dict[tuple[str, str], list[str]]:
    """frontier.md's rows by (method, epsilon): the cells, the first holding the leading '| '."""
    lines = markdown(rows, "").splitlines()
    return {
        tuple(line.split(" | ")[:2]): line.split(" | ") for line in lines if line.startswith("| ") and " | " in line
    }


def test_each_private_line_reports_its_own_spent_epsilon(frontier):
    _, rows = frontier
    table = _table(rows)
    for method in ("fedavg", "gbdt"):
        (row,) = [r for r in rows if r["method"] == method and r["epsilon"] == 3.0]
        assert 0 < row["epsilon_spent_max"] <= 3.0 + 1e-9
        (nodp,) = [r for r in rows if r["method"] == method and math.isinf(r["epsilon"])]
        assert nodp["epsilon_spent_max"] == ""
        # the table's column is the line's own, not the largest of every line at that epsilon
        assert table[(f"| {method}", "3")][6] == f"{row['epsilon_spent_max']:.3f}"
        assert table[(f"| {method}", "none")][6] == "-"
    fedavg_spent = [r["epsilon_spent_max"] for r in rows if r["method"] == "fedavg" and r["epsilon"] == 3.0]
    gbdt_spent = [r["epsilon_spent_max"] for r in rows if r["method"] == "gbdt" and r["epsilon"] == 3.0]
    assert f"{fedavg_spent[0]:.3f}" != f"{gbdt_spent[0]:.3f}"  # else the column could not tell the lines apart


def test_gbdt_is_measured_against_hgb_as_its_own_family(frontier):
    _, rows = frontier
    stats = summarize(rows)
    limit, pooled = stats[("hgb", math.inf)][0], stats[("pooled", math.inf)][0]
    table = _table(rows)
    gbdt, fedavg = table[("| gbdt", "3")], table[("| fedavg", "3")]
    gbdt_auc, fedavg_auc = stats[("gbdt", 3.0)][0], stats[("fedavg", 3.0)][0]
    assert gbdt[4] == gbdt[5] == f"{gbdt_auc - limit:+.4f}"  # vs the limit, and vs its own family: both hgb
    assert fedavg[4] == f"{fedavg_auc - limit:+.4f}" and fedavg[5] == f"{fedavg_auc - pooled:+.4f}"


def test_a_line_is_named_by_its_model_or_strategy():
    assert method_name(GBDT) == "gbdt"
    assert method_name(BASE.replace(strategy="fedprox")) == "fedprox"


def test_the_second_line_must_be_gbdt(tmp_path):
    with pytest.raises(ValueError, match="gbdt"):
        sweep(BASE, [3.0], [0], tmp_path, gbdt=BASE)
    with pytest.raises(ValueError, match="gbdt"):  # two lines both labelled gbdt
        sweep(GBDT, [3.0], [0], tmp_path, gbdt=GBDT)


def test_gbdt_settings_without_the_gbdt_line_fail_in_one_line(tmp_path):
    result = CliRunner().invoke(
        app, ["sweep", "--gbdt-set", "gbdt-depth=2", "--output-dir", str(tmp_path / "out")], catch_exceptions=False
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: --gbdt-set needs --gbdt"]
    assert not (tmp_path / "out").exists()


def test_a_bad_gbdt_setting_fails_in_one_line(tmp_path):
    result = CliRunner().invoke(
        app,
        ["sweep", "--gbdt", "--gbdt-set", "gbdt-depth=0", "--output-dir", str(tmp_path / "out")],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: gbdt-depth must be between 1 and 10, got 0"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--gbdt-set", "gbdt-depth"], "--gbdt-set expects KEY=VALUE"),
        (["--gbdt-set", "model=logreg"], "cannot change the gbdt line's model"),
        (["--set", "model=gbdt"], "--gbdt adds a gbdt line beside"),
        (["--gbdt-set", "rounds=abc"], "'rounds' expects int"),
        (["--gbdt-set", "lenders=2"], "--gbdt-set cannot change 'lenders'"),
        (["--gbdt-set", "data-dir=/elsewhere"], "--gbdt-set cannot change 'data-dir'"),
        (["--gbdt-set", "seed=4"], "--gbdt-set cannot change 'seed'"),
    ],
)
def test_a_gbdt_line_that_is_not_one_fails_in_one_line(tmp_path, options, message):
    result = CliRunner().invoke(
        app, ["sweep", "--gbdt", *options, "--output-dir", str(tmp_path / "out")], catch_exceptions=False
    )
    (line,) = result.output.strip().splitlines()
    assert result.exit_code == 2 and line.startswith("error: ") and message in line
    assert not (tmp_path / "out").exists()


DP_LENDER = ["sweep", "--set", "dp-level=lender", "--set", "delta=1e-4"]  # a first line gbdt cannot take


def test_a_gbdt_setting_that_the_first_line_would_refuse_is_the_gbdt_lines_own(tmp_path, monkeypatch):
    """--gbdt-set is applied with the gbdt line's own model, rounds and strategy, validated once: a --set the
    gbdt line could not take (lender-level DP) is undone by its --gbdt-set, not refused on the way."""
    import benchmarks.frontier as frontier_module

    seen = {}
    monkeypatch.setattr(frontier_module, "sweep", lambda base, *a, gbdt=None, **k: seen.update(base=base, gbdt=gbdt))
    result = CliRunner().invoke(
        app,
        [*DP_LENDER, "--gbdt", "--gbdt-set", "dp-level=record", "--output-dir", str(tmp_path)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert seen["base"].dp_level == "lender" and seen["gbdt"].dp_level == "record"


def test_the_gbdt_line_takes_fedavg_whatever_the_first_lines_strategy(tmp_path, monkeypatch):
    import benchmarks.frontier as frontier_module

    seen = {}
    monkeypatch.setattr(
        frontier_module,
        "sweep",
        lambda base, *a, gbdt=None, command="", **k: seen.update(base=base, gbdt=gbdt, command=command),
    )
    result = CliRunner().invoke(
        app,
        ["sweep", "--set", "strategy=fedprox", "--gbdt", "--gbdt-set", "gbdt-bins=16", "--output-dir", str(tmp_path)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert seen["base"].strategy == "fedprox" and seen["base"].model != "gbdt"
    assert seen["gbdt"].model == "gbdt" and seen["gbdt"].strategy == "fedavg" and seen["gbdt"].gbdt_bins == 16
    # the command written next to the frontier reproduces both lines
    assert "--set strategy=fedprox --gbdt --gbdt-set gbdt-bins=16" in seen["command"]
