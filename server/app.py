"""The coordinator as a Flower ServerApp.

`flwr run .` reads the configuration from pyproject's [tool.flwr.app.config] (overridable with
--run-config); `fedcredit run` builds the same app around the configuration it parsed.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federation.config import RunConfig
from server.loop import run_federation
from server.run_record import RoundSummary


def progress_line(summary: RoundSummary) -> str:
    auc = summary.global_metrics.get("auc", float("nan"))
    declined = f", {summary.declined} declined" if summary.declined else ""
    return (
        f"round {summary.round}: global AUC {auc:.4f}, max epsilon spent {summary.max_epsilon:.3f}, "
        f"{summary.trained} lenders trained{declined} ({summary.seconds:.1f} s)"
    )


def _print_progress(summary: RoundSummary) -> None:
    print(progress_line(summary), flush=True)


def make_server_app(
    cfg: RunConfig | None = None, on_round: Callable[[RoundSummary], None] = _print_progress, resume: bool = False
) -> ServerApp:
    """A ServerApp running `cfg`, or, when None, the run config Flower hands it."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = cfg if cfg is not None else RunConfig.from_record(dict(context.run_config))
        path = run_federation(grid, config, on_round=on_round, resume=resume)
        if cfg is None:  # under `flwr run` nobody else reports where the results went
            print(f"run folder: {path}", flush=True)

    return server_app


app = make_server_app()
