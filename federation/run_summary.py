"""What a finished run folder says, in one JSON-ready object: where its files are, how it ended, its final global
scores and one row per lender; and that object as the table `fedcredit run` prints.

One reader for every way a run is shown: the table and `--json` of `fedcredit run` (and deploy, coordinator run),
and the `RunResult` of the Python API (fedcredit/api.py). It reads the files the ledger derives (config.json,
metrics.csv, privacy.json, manifests/), so it says nothing the verifier does not check.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from federation.metrics import METRICS
from federation.runfolder import GLOBAL_SCOPE, LENDER_SCOPE, read_csv_rows

# One row per lender: the keys of each `lenders` entry of the summary, in the order the table shows them.
LENDER_FIELDS = (
    "lender",
    "train_records",
    "fields_refused",
    "records_without_consent",
    "auc",
    "ks",
    "epsilon_rdp",
    "epsilon_prv",
    "budget",
)
# Their table headers, two short lines each, so that the table of a 10-digit record count still fits 80 columns.
_HEADERS = (
    "lender",
    "records\ntrain",
    "fields\nrefused",
    "without\nconsent",
    "AUC",
    "KS",
    "epsilon\nRDP",
    "epsilon\nPRV",
    "epsilon\nbudget",
)


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The summary of the finished run folder `run_dir` (JSON-ready: a score that is undefined, such as the AUC
    of a lender whose test records hold one class, or a value that does not apply, is None)."""
    path = Path(run_dir)
    config = json.loads((path / "config.json").read_text())
    metrics = read_csv_rows(path / "metrics.csv")
    privacy = json.loads((path / "privacy.json").read_text())
    units = privacy.get("units", {})
    last_round = max((int(r["round"]) for r in metrics), default=0)
    final = [r for r in metrics if int(r["round"]) == last_round]
    scores = {r["lender"]: r for r in final if r["scope"] == LENDER_SCOPE}
    lenders = []
    for manifest_path in sorted((path / "manifests").glob("lender_*.json")):
        manifest = json.loads(manifest_path.read_text())
        lender = int(manifest["lender"])
        row = scores.get(str(lender), {})
        unit = units.get(str(lender)) or {}
        lenders.append(
            {
                "lender": lender,
                "train_records": manifest["train_records"],
                "fields_refused": len(manifest["fields_refused"]),
                "records_without_consent": manifest["records_without_consent"],
                "auc": _number(row.get("auc")),
                "ks": _number(row.get("ks")),
                "epsilon_rdp": unit.get("epsilon_rdp"),
                "epsilon_prv": unit.get("epsilon_prv"),
                "budget": unit.get("budget"),
            }
        )
    glob = next((r for r in final if r["scope"] == GLOBAL_SCOPE), {})
    registry = Path(f"{path}-registry.json")
    verify = f"fedcredit verify {path}" + (f" --registry {registry}" if registry.exists() else "")
    return {
        "run_dir": str(path),
        "report": str(path / "report.html"),
        "registry": str(registry) if registry.exists() else None,
        "verify_command": verify,
        "rounds_completed": config.get("rounds-completed"),
        "last_round": last_round,
        "stopped_early": config.get("stopped-early") or None,
        "final_metrics": {k: _number(glob.get(k)) for k in METRICS},
        "dp": bool(privacy.get("dp")),
        "accountant": privacy.get("accountant") if privacy.get("dp") else None,
        "noise": sorted({u["noise"] for u in units.values() if u.get("noise")}),
        "federation_epsilon": _unit_epsilon(units["federation"]) if "federation" in units else None,
        "lenders": lenders,
    }


def _unit_epsilon(unit: dict) -> dict[str, Any]:
    return {k: unit.get(k) for k in ("epsilon_rdp", "epsilon_prv", "budget")}


def _number(text: str | None) -> float | None:
    """A CSV cell as a number; None where it is empty or NaN (JSON has no NaN)."""
    if text in (None, ""):
        return None
    value = float(text)
    return None if math.isnan(value) else value


def lender_table(summary: dict[str, Any]) -> Table:
    """The per-lender table, then the global row. No cell wraps at 80 columns (68 wide with 7-digit record counts):
    two-line headers, no vertical rules, columns that never fold (tests/test_outputs_join.py renders it at 80)."""
    table = Table(
        title=f"Lenders after round {summary['last_round']}",
        box=box.SIMPLE_HEAD,  # no vertical rules: one space between columns, a rule under the headers
        show_edge=False,
        padding=(0, 0),
    )
    for header in _HEADERS:
        table.add_column(header, justify="right", no_wrap=True)
    for row in summary["lenders"]:
        table.add_row(
            str(row["lender"]),
            str(row["train_records"]),
            str(row["fields_refused"]),
            str(row["records_without_consent"]),
            _score(row["auc"]),
            _score(row["ks"]),
            _epsilon(row["epsilon_rdp"]),
            _epsilon(row["epsilon_prv"]),
            _budget(row["budget"]),
        )
    final = summary["final_metrics"]
    table.add_row("global", "", "", "", _score(final["auc"]), _score(final["ks"]), "", "", "", style="bold")
    return table


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The table, how privacy was enforced, then each path on a line of its own (never folded: copy it whole)."""
    console.print(lender_table(summary))
    fed = summary["federation_epsilon"]
    if fed:
        console.print(
            f"lender-level epsilon RDP | PRV / budget: {_epsilon(fed['epsilon_rdp'])} | "
            f"{_epsilon(fed['epsilon_prv'])} / {_budget(fed['budget'])}",
            highlight=False,
        )
    if summary["dp"]:
        console.print(
            f"budgets enforced with the {str(summary['accountant']).upper()} accountant; "
            f"noise: {'; '.join(summary['noise']) or '-'}",
            highlight=False,
        )
    else:
        console.print("no differential privacy in this run", highlight=False)
    if summary["stopped_early"]:
        console.print(f"stopped early: {summary['stopped_early']}", highlight=False)
    for label, value in (
        ("run folder:", summary["run_dir"]),
        ("privacy report:", summary["report"]),
        ("check it:", summary["verify_command"]),
    ):
        console.print(label, highlight=False)
        console.print(f"  {value}", highlight=False, soft_wrap=True, markup=False)


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _epsilon(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _budget(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
