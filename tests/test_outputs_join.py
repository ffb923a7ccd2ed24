"""Outputs a program can use: metrics.csv and epsilon.csv join on (lender, round) as pandas reads them,
`fedcredit run --json` prints one JSON object and nothing else on stdout, `fedcredit verify --json` keeps its exit
codes, and the per-lender table fits 80 columns with each path on a line of its own."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from fedcredit import cli
from federation.runfolder import EPSILON_COLUMNS, METRICS_COLUMNS

runner = CliRunner()
README = Path(__file__).resolve().parent.parent / "README.md"
LENDERS, ROUNDS = 3, 2


@pytest.fixture(scope="module")
def json_run(tmp_path_factory):
    """One small record-level DP run through `fedcredit run --json`, in a folder whose path is over 80 characters."""
    base = tmp_path_factory.mktemp("join")
    out = base / ("a-run-folder-whose-name-is-long-" * 3)
    args = ["run", "--records", "3000", "--lenders", str(LENDERS), "--rounds", str(ROUNDS), "--epsilon", "2"]
    result = runner.invoke(cli.app, [*args, "--output-dir", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert len(str(out)) > 80
    return out, result


def test_metrics_and_epsilon_csv_merge_on_lender_and_round_as_read(json_run):
    out, _ = json_run
    metrics, epsilon = pd.read_csv(out / "metrics.csv"), pd.read_csv(out / "epsilon.csv")  # default dtypes
    assert list(metrics.columns) == METRICS_COLUMNS and list(epsilon.columns) == EPSILON_COLUMNS
    assert "train_loss" not in metrics.columns
    assert epsilon.lender.dtype == "int64"  # an integer lender, never text
    assert set(metrics.scope) == {"lender", "global"} and metrics[metrics.scope == "global"].lender.isna().all()
    merged = metrics.merge(epsilon, on=["lender", "round"])
    assert len(merged) == len(epsilon) == LENDERS * ROUNDS  # every lender's every round, matched once
    assert (merged.scope_x == "lender").all() and (merged.scope_y == "lender").all()
    assert sorted(zip(merged.lender.astype(int), merged["round"], strict=True)) == [
        (lender, r) for lender in range(LENDERS) for r in range(1, ROUNDS + 1)
    ]
    own = metrics[metrics.scope == "lender"].set_index(["lender", "round"]).auc
    assert merged.set_index(["lender", "round"]).auc.equals(own.loc[merged.set_index(["lender", "round"]).index])


def test_readme_documents_every_csv_column():
    section = README.read_text().split("## The run folder", 1)[1].split("\n## ", 1)[0]
    for column in [*METRICS_COLUMNS, *EPSILON_COLUMNS]:
        assert f"`{column}`" in section, column


def test_run_json_is_one_object_on_stdout_and_the_progress_goes_to_stderr(json_run):
    out, result = json_run
    summary = json.loads(result.stdout)  # the whole of stdout
    assert summary["run_dir"] == str(out) and Path(summary["report"]) == out / "report.html"
    assert Path(summary["report"]).is_file() and summary["registry"] == f"{out}-registry.json"
    assert summary["rounds_completed"] == ROUNDS and summary["dp"] is True and summary["accountant"] == "rdp"
    metrics = pd.read_csv(out / "metrics.csv")
    final = metrics[(metrics.scope == "global") & (metrics["round"] == ROUNDS)].iloc[0]
    assert summary["final_metrics"]["auc"] == pytest.approx(final.auc, rel=1e-12)
    privacy = json.loads((out / "privacy.json").read_text())["units"]
    assert [row["lender"] for row in summary["lenders"]] == list(range(LENDERS))
    for row in summary["lenders"]:
        manifest = json.loads((out / "manifests" / f"lender_{row['lender']:03d}.json").read_text())
        assert row["train_records"] == manifest["train_records"]
        assert row["epsilon_rdp"] == privacy[str(row["lender"])]["epsilon_rdp"] <= row["budget"] == 2.0
    assert "round 1:" in result.stderr and "round 1:" not in result.stdout


def test_the_lender_table_fits_80_columns_and_each_path_is_a_line_of_its_own(json_run, monkeypatch):
    out, result = json_run
    screen = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=screen, width=80))
    cli._print_summary(out)
    lines = screen.getvalue().splitlines()
    summary = json.loads(result.stdout)
    paths = [summary["run_dir"], summary["report"], summary["verify_command"]]
    assert [line.strip() for line in lines if line.strip() in paths] == paths  # each whole, on its own line
    assert all(len(line) <= 80 for line in lines if line.strip() not in paths), lines
    assert "…" not in screen.getvalue()  # no cell cut short
    for row in summary["lenders"]:  # each lender's row on one line, every cell in it
        cells = [row["lender"], row["train_records"], row["fields_refused"], row["records_without_consent"]]
        pattern = r"\s+".join(str(c) for c in cells) + r"\s+\d\.\d{4}\s+\d\.\d{4}\s+\d\.\d{3}\s+\d\.\d{3}\s+2$"
        assert sum(bool(re.match(r"\s*" + pattern, line)) for line in lines) == 1, (pattern, lines)


def test_verify_json_keeps_the_exit_codes(json_run, tmp_path):
    out, _ = json_run
    registry = f"{out}-registry.json"

    def verify(*args: str) -> tuple[int, dict]:
        result = runner.invoke(cli.app, ["verify", *args, "--json"])
        return result.exit_code, json.loads(result.stdout)

    code, verified = verify(str(out), "--registry", registry)
    assert code == 0 and verified["verified"] is True and verified["pinned"] is True
    code, unpinned = verify(str(out))
    assert code == 3 and unpinned["verified"] is True and unpinned["pinned"] is False
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    (edited / "metrics.csv").write_text((edited / "metrics.csv").read_text().replace(",lender,0,", ",lender,1,", 1))
    code, failed = verify(str(edited), "--registry", registry)
    assert code == 1 and failed["verified"] is False and "metrics.csv" in failed["where"]
    code, usage = verify(str(tmp_path / "nowhere"))
    assert code == 2 and usage["verified"] is None and "no such run folder" in usage["error"]


def test_run_json_that_fails_prints_nothing_on_stdout(tmp_path):
    result = runner.invoke(cli.app, ["run", "--json", "--epsilon", "-1", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.stdout == ""
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")], result.stderr
    assert not (tmp_path / "run").exists()
