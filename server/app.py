"""The coordinator as a Flower ServerApp.

`flwr run .` reads the configuration from pyproject's [tool.flwr.app.config] (overridable with
--run-config); `fedcredit run` builds the same app around the configuration it parsed. Under `flwr run` the app
prints what `fedcredit run` prints at the end (the per-lender table, the run folder and the report), in the
ServerApp's output that `flwr run --stream` and `flwr log` show, and a fedcredit error is one line there.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from federation.config import RunConfig
from federation.errors import FedCreditError
from federation.flower_logs import failure_line, flower_lines_once, one_line_errors, reported
from federation.run_summary import print_summary, read_summary
from server.enrolment import wait_for_nodes
from server.run_record import RoundSummary

flower_lines_once()  # the run imports Opacus (the accountants), whose root log handler would repeat them
one_line_errors()  # Flower logs the exception a ServerApp raises; ours name the problem in one line


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
        try:
            config = cfg if cfg is not None else RunConfig.from_record(dict(context.run_config))
            # Before torch and Opacus are imported (tens of seconds on a busy machine): a federation with too few
            # SuperNodes fails at once. run_federation asks again when it enrols the lenders, and finds them there.
            wait_for_nodes(grid, config.lenders)
            from server.loop import run_federation

            path = run_federation(grid, config, on_round=on_round, resume=resume)
        except FedCreditError as exc:
            if cfg is None:  # under `flwr run`: the one line, at once (`fedcredit run` prints its own)
                print(failure_line(exc), flush=True)
            # Flower marks the run failed (`flwr ls`: finished:failed, the message as its details) and logs it: that
            # record, with its traceback, is dropped (federation/flower_logs.py), the line is out already.
            raise reported(exc) from None
        if cfg is None:  # under `flwr run` nobody else reports the results: the summary `fedcredit run` prints
            # Flower captures this output (no terminal): rich's 80 columns, no colour codes.
            print_summary(read_summary(path.resolve()), Console(highlight=False))

    return server_app


app = make_server_app()
