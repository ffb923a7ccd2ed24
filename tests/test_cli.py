"""Bad input: a clear one-line error naming the problem, a non-zero exit, no run folder left."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcredit.cli import app

runner = CliRunner()
CARD = """
name = "mine"
[columns.income]
category = "capacity"
bounds = [0, 100]
[columns.defaulted]
category = "label"
positive = 1
"""


def _invoke(args, out: Path):
    result = runner.invoke(app, ["run", "--engine", "inprocess", "--rounds", "1", "--output-dir", str(out), *args])
    return result, result.output


def _assert_clean_failure(result, output, out: Path, needle: str):
    assert result.exit_code != 0
    # one line names the problem, however long the path in it (rich must not wrap it at the terminal width)
    assert any(needle in line and "error:" in line for line in output.splitlines()), output
    assert not out.exists()
    assert not any(p.name.startswith(f".{out.name}.partial") for p in out.parent.iterdir())
    assert not Path(f"{out}-keys").exists()


def _csv(tmp_path, text: str, card: str = CARD) -> list[str]:
    (tmp_path / "data.csv").write_text(text)
    (tmp_path / "card.toml").write_text(card)
    return [
        "--dataset",
        "csv",
        "--csv-path",
        str(tmp_path / "data.csv"),
        "--card-path",
        str(tmp_path / "card.toml"),
        "--partition",
        "iid",
        "--lenders",
        "2",
    ]


def _rows(n=60, nan_at=None):
    lines = ["income,defaulted"]
    for i in range(n):
        lines.append(f"{'' if i == nan_at else i % 100},{int(i % 3 == 0)}")
    return "\n".join(lines) + "\n"


def test_unknown_dataset(tmp_path):
    out = tmp_path / "run"
    _assert_clean_failure(*_invoke(["--dataset", "lending_club"], out), out, "unknown dataset 'lending_club'")


def test_missing_data_dir(tmp_path):
    out = tmp_path / "run"
    args = ["--dataset", "german_credit", "--partition", "iid", "--data-dir", str(tmp_path / "nowhere")]
    _assert_clean_failure(*_invoke(args, out), out, "data directory not found")


def test_malformed_csv(tmp_path):
    out = tmp_path / "run"
    args = _csv(tmp_path, "income,defaulted\n1,0\n2,1,7,7\n")
    _assert_clean_failure(*_invoke(args, out), out, "not a well-formed CSV")


def test_nan_in_numeric_column(tmp_path):
    out = tmp_path / "run"
    _assert_clean_failure(*_invoke(_csv(tmp_path, _rows(nan_at=5)), out), out, "column 'income' has 1 NaN")


def test_card_that_misses_a_column(tmp_path):
    out = tmp_path / "run"
    text = _rows().replace("income,defaulted", "income,defaulted,shoe_size")
    text = "\n".join(line + ",42" if i else line for i, line in enumerate(text.strip().split("\n"))) + "\n"
    _assert_clean_failure(*_invoke(_csv(tmp_path, text), out), out, "does not describe column 'shoe_size'")


@pytest.mark.parametrize("eps", ["0", "-1"])
def test_non_positive_epsilon(tmp_path, eps):
    out = tmp_path / "run"
    _assert_clean_failure(*_invoke(["--epsilon", eps], out), out, "epsilon must be a positive")


def test_more_lenders_than_records(tmp_path):
    out = tmp_path / "run"
    _assert_clean_failure(
        *_invoke([*_csv(tmp_path, _rows(30)), "--lenders", "20"], out), out, "20 lenders need at least"
    )


def test_prohibited_column_declared_as_credit(tmp_path):
    out = tmp_path / "run"
    card = CARD.replace("[columns.income]", "[columns.gender_code]")
    args = _csv(tmp_path, _rows().replace("income", "gender_code"), card)
    _assert_clean_failure(*_invoke(args, out), out, "gender_code")


def test_unknown_option(tmp_path):
    result = runner.invoke(app, ["run", "--colour", "blue"])
    assert result.exit_code != 0 and "No such option" in result.output


def test_bring_your_own_csv_and_card_runs(tmp_path):
    out = tmp_path / "run"
    result, output = _invoke([*_csv(tmp_path, _rows(400)), "--epsilon", "4"], out)
    assert result.exit_code == 0, output
    assert "epsilon spent / budget" in output.replace("\n", " ") or "budget" in output
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "csv" and config["epsilon"] == {"0": 4.0, "1": 4.0}


def test_an_error_is_one_line_however_long_the_path(tmp_path):
    deep = tmp_path / ("a-folder-with-a-long-name-" * 4)
    deep.mkdir()
    out = deep / "run"
    result, output = _invoke(_csv(deep, "income,defaulted\n1,0\n2,1,7,7\n"), out)
    assert result.exit_code == 2
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and error_lines[0].endswith("saw 4"), output


@pytest.mark.parametrize(
    "command, text",
    [
        (["verify"], "The run folder to check."),
        (["score"], "The finished run folder"),
        (["card", "init"], "Your CSV file"),
    ],
)
def test_an_arguments_help_is_shown_in_help(command, text):
    """typer 0.20 (Flower's pin) with click >= 8.3 lost every argument's help (fedcredit/typer_compat.py)."""
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and text in result.output


def test_negative_lender_processes_is_one_line(tmp_path):
    out = tmp_path / "run"
    result, output = _invoke(["--records", "2000", "--lenders", "2", "--lender-processes", "-1"], out)
    _assert_clean_failure(result, output, out, "lender-processes must be 0 (one per CPU) or more, got -1")


def test_bad_data_with_lender_processes_is_the_same_one_line(tmp_path):
    """Bad data with lender processes started: the same one line as in one process, nothing written, the processes
    stopped (a lender refused inside its own process: tests/test_lender_processes.py)."""
    csv = tmp_path / "loans.csv"
    csv.write_text("income,defaulted\n" + "".join(f"{i % 90},{i % 2}\n" for i in range(40)) + "nan,1\n")
    card = tmp_path / "card.toml"
    card.write_text(CARD)
    lines = []
    for processes in ("1", "2"):
        out = tmp_path / f"run{processes}"
        args = ["--dataset", "csv", "--csv-path", str(csv), "--card-path", str(card), "--lenders", "2"]
        result, output = _invoke([*args, "--lender-processes", processes], out)
        _assert_clean_failure(result, output, out, "error:")
        lines.append([line for line in output.splitlines() if "error:" in line])
    assert lines[0] == lines[1] and len(lines[0]) == 1
