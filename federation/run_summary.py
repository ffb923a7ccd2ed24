"""What a finished run folder says, and that as the table `fedcredit run` prints at the end.

One reader for every way a run is shown: `fedcredit run` (and deploy) and the ServerApp under `flwr run`. It reads
the files the ledger derives (config.json, metrics.csv, privacy.json, manifests/), so it says nothing the verifier
does not check.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from federation.runfolder import read_csv_rows


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The summary of the finished run folder `run_dir`: its paths, final global scores and one row per lender."""
    path = Path(run_dir)
    config = json.loads((path / "config.json").read_text())
    metrics = read_csv_rows(path / "metrics.csv")
    privacy = json.loads((path / "privacy.json").read_text())
    units = privacy.get("units", {})
    last_round = max((int(r["round"]) for r in metrics), default=0)
    final = [r for r in metrics if r["round"] == str(last_round)]
    lenders = []
    for manifest_path in sorted((path / "manifests").glob("lender_*.json")):
        manifest = json.loads(manifest_path.read_text())
        row = next((r for r in final if r["lender"] == str(manifest["lender"])), {})
        lenders.append(
            {
                "lender": int(manifest["lender"]),
                "train_records": manifest["train_records"],
                "fields_refused": len(manifest["fields_refused"]),
                "records_without_consent": manifest["records_without_consent"],
                "auc": row.get("auc"),
                "ks": row.get("ks"),
                "unit": units.get(str(manifest["lender"])),
            }
        )
    glob = next((r for r in final if r["lender"] == "global"), {})
    registry = Path(f"{path}-registry.json")
    return {
        "run_dir": str(path),
        "report": str(path / "report.html"),
        "verify_command": f"fedcredit verify {path}" + (f" --registry {registry}" if registry.exists() else ""),
        "last_round": last_round,
        "stopped_early": config.get("stopped-early") or None,
        "final_metrics": {"auc": glob.get("auc"), "ks": glob.get("ks")},
        "dp": bool(privacy.get("dp")),
        "accountant": privacy.get("accountant"),
        "lender_level_dp": bool(units),
        "noise": sorted({u.get("noise") for u in units.values() if u.get("noise")}),
        "federation": units.get("federation"),
        "lenders": lenders,
    }


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The per-lender table, how privacy was enforced, then the run folder and the report."""
    table = Table(title=f"Lenders after round {summary['last_round']}")
    for column in (
        "lender",
        "records (train)",
        "fields refused",
        "without consent",
        "AUC",
        "KS",
        "epsilon rdp | prv / budget",
    ):
        table.add_column(column, justify="right")
    for row in summary["lenders"]:
        unit = row["unit"]
        spent = _spent(unit) if unit else ("lender-level" if summary["lender_level_dp"] else "no DP")
        table.add_row(
            str(row["lender"]),
            str(row["train_records"]),
            str(row["fields_refused"]),
            str(row["records_without_consent"]),
            _fmt(row["auc"]),
            _fmt(row["ks"]),
            spent,
        )
    final = summary["final_metrics"]
    table.add_row("global", "", "", "", _fmt(final["auc"]), _fmt(final["ks"]), "", style="bold")
    console.print(table)
    if summary["federation"]:
        console.print(f"lender-level epsilon spent / budget: {_spent(summary['federation'])}", highlight=False)
    if summary["dp"]:
        console.print(
            f"budgets enforced with the {summary['accountant'].upper()} accountant; noise: "
            f"{'; '.join(summary['noise']) or '-'}",
            highlight=False,
        )
    if summary["stopped_early"]:
        console.print(f"stopped early: {summary['stopped_early']}")
    console.print(f"run folder: {summary['run_dir']}", highlight=False)
    console.print(f"privacy report: {summary['report']}  (check it: {summary['verify_command']})", highlight=False)


def _spent(unit: dict) -> str:
    return f"{unit['epsilon_rdp']:.3f} | {unit['epsilon_prv']:.3f} / {unit['budget']:g}"


def _fmt(value: str | None) -> str:
    if value in (None, ""):
        return "-"
    v = float(value)
    return "n/a" if math.isnan(v) else f"{v:.4f}"
