"""Run a federation: validate the input, then run the ServerApp and ClientApp on an engine.

Engines:
- "simulation": Flower's simulation runtime (Ray), one virtual SuperNode per lender;
- "inprocess": the same apps on an in-process Grid (federation/inprocess.py): no engine start cost.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from federation.config import RunConfig
from federation.runfolder import default_run_dir


def flower_environment(project_root: Path | None = None) -> None:
    """Flower settings every entry point needs (before Flower starts anything)."""
    root = project_root or Path.cwd()
    os.environ.setdefault("FLWR_HOME", str(root / ".flwr"))
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


def validate(cfg: RunConfig):
    """Load every lender's data once, so bad input fails before anything is written or started; then check
    that each privacy unit's delta gives a meaningful guarantee (it depends on the unit's count)."""
    from federation.data import describe
    from federation.privacy.limits import check_delta

    summary = describe(cfg)
    if cfg.dp and cfg.dp_level == "lender":  # the unit is a lender: n is the number of lenders
        check_delta(cfg.lenders, cfg.delta, "the federation (lender-level DP)", unit="lenders")
    elif cfg.dp:  # the unit is a training record: the delta a lender uses (cfg.delta or its default) for its n
        for lender, records in enumerate(summary.lender_records):
            check_delta(records, cfg.delta, f"lender {lender}")
    return summary


def resume_config(run_dir: str | Path) -> RunConfig:
    """The configuration of the unfinished run for `run_dir`, from its ledger's first entry."""
    import json

    from federation.errors import ConfigError

    target = Path(run_dir).resolve()
    left = sorted(target.parent.glob(f".{target.name}.partial-*"), key=lambda p: p.stat().st_mtime)
    if target.exists() or not left:
        raise ConfigError(f"no unfinished run to resume at {target}")
    ledger = left[-1] / "ledger.jsonl"
    try:
        first = json.loads(ledger.read_text().splitlines()[0])
        return RunConfig.from_record(first["body"]["config"])
    except (OSError, IndexError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read the unfinished run's configuration from {ledger}: {exc}") from None


def run(cfg: RunConfig, on_round: Callable | None = None, resume: bool = False) -> Path:
    """Run `cfg` and return the finished run folder (with `resume`, finish a killed run of `cfg`)."""
    flower_environment()
    if not cfg.output_dir:
        cfg = cfg.replace(output_dir=str(default_run_dir()))
    validate(cfg)
    from clients.app import app as client_app
    from server.app import _print_progress, make_server_app

    server_app = make_server_app(cfg, on_round=on_round or _print_progress, resume=resume)
    if cfg.engine == "inprocess":
        from federation.inprocess import InProcessGrid
        from flwr.app import Context, RecordDict

        grid = InProcessGrid(client_app, cfg.lenders)
        server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    else:
        import logging

        from flwr.simulation import run_simulation

        run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=cfg.lenders,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                            "init_args": {"logging_level": logging.ERROR, "log_to_driver": True}},
        )
    path = Path(cfg.output_dir).resolve()
    if not path.is_dir():
        raise RuntimeError(f"the run ended without writing {path}; see the messages above")
    return path
