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
    """Load every lender's data once, so bad input fails before anything is written or started."""
    from federation.data import describe

    return describe(cfg)


def run(cfg: RunConfig, on_round: Callable | None = None) -> Path:
    """Run `cfg` and return the finished run folder."""
    flower_environment()
    if not cfg.output_dir:
        cfg = cfg.replace(output_dir=str(default_run_dir()))
    validate(cfg)
    from clients.app import app as client_app
    from server.app import _print_progress, make_server_app

    server_app = make_server_app(cfg, on_round=on_round or _print_progress)
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
