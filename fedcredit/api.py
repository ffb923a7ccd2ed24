"""The Python API: run a federation on this machine and get its results as objects.

    from fedcredit import api
    from federation.config import RunConfig

    result = api.run(RunConfig(lenders=3, rounds=2, epsilon=2.0))   # or api.run({"lenders": 3, "rounds": 2})
    result.run_dir                   # the run folder (a Path)
    result.report                    # its privacy report, report.html
    result.summary["final_metrics"]  # the global AUC, KS, Gini, Brier and log loss after the last round
    result.lenders                   # one row per lender (a pandas DataFrame, integer `lender` column)
    api.load(result.run_dir)         # the same RunResult for a run folder made earlier

It is `fedcredit run` without the command line: the same checks (bad input raises a FedCreditError naming the
problem, before anything is written), the same run folder, and Flower's log kept to its warnings, printed once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from federation.config import RunConfig
from federation.errors import FedCreditError
from federation.run_summary import LENDER_FIELDS, read_summary


@dataclass(frozen=True)
class RunResult:
    """A finished run: where its files are, what it says (federation/run_summary.py), and its lenders as a table."""

    run_dir: Path
    report: Path
    summary: dict[str, Any]
    lenders: pd.DataFrame


def load(run_dir: str | Path) -> RunResult:
    """The RunResult of a finished run folder."""
    summary = read_summary(run_dir)
    table = pd.DataFrame(summary["lenders"], columns=list(LENDER_FIELDS))
    table = table.astype({"lender": "int64", "train_records": "int64", "records_without_consent": "int64"})
    return RunResult(Path(summary["run_dir"]), Path(summary["report"]), summary, table)


def run(
    config: RunConfig | Mapping[str, Any],
    progress: Callable[[str], None] | None = None,
    flower_log_level: int | None = None,
) -> RunResult:
    """Run `config` (a RunConfig, or run configuration keys as in pyproject.toml's `[tool.flwr.app.config]`) and
    return its RunResult.

    `progress` receives one line per finished round (default: nothing is printed). Flower's log shows its
    warnings only (`flower_log_level`: another level, e.g. logging.INFO), each line once. Raises a FedCreditError
    for bad input or a refused run."""
    from fedcredit.runner import quiet_flower
    from fedcredit.runner import run as run_federation
    from server.app import progress_line

    cfg = config.validated() if isinstance(config, RunConfig) else RunConfig.from_record(config)
    restore = quiet_flower() if flower_log_level is None else quiet_flower(flower_log_level)
    try:
        path = run_federation(cfg, on_round=lambda summary: progress and progress(progress_line(summary)))
    except RuntimeError as exc:  # Flower wraps errors raised in the ServerApp thread
        if isinstance(exc.__cause__, FedCreditError):
            raise exc.__cause__ from None
        raise
    finally:
        restore()
    return load(path)
