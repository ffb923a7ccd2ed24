"""How fedcredit's apps show in Flower's log: each of Flower's lines once, and a fedcredit error as one line.

Flower logs through its own "flwr" logger, which has its own console handler and also propagates to the root logger.
Opacus calls `logging.basicConfig` when it is imported (opacus/utils/module_utils.py), which gives the root logger
a handler of its own, so in a process that imports Opacus (a lender training, the coordinator accounting) every
line of Flower's would be printed twice: once by Flower, once by Opacus's root handler with a timestamp.

A ServerApp that raises is logged by Flower's runtime with the full traceback ("ServerApp raised an exception" in
flwr-serverapp, "Simulation raised an exception" in flwr-simulation, flwr 1.42), then the run is marked failed. A
fedcredit error (a FedCreditError) already names the problem in one sentence; its traceback only buries it.
"""

from __future__ import annotations

import logging

from federation.errors import FedCreditError

FLOWER_LOGGER = "flwr"


def flower_lines_once() -> None:
    """Flower's log lines are printed by Flower's handler only (not again by a root handler Opacus installed)."""
    logging.getLogger(FLOWER_LOGGER).propagate = False


def failure_line(error: FedCreditError) -> str:
    return "fedcredit: the run failed: " + " ".join(str(error).split())


def reported(error: FedCreditError) -> FedCreditError:
    """Mark `error` as shown to the user already (by the ServerApp under `flwr run`, or by `fedcredit run`, which
    catches it), so that Flower's record of it is dropped: in the simulation runtime Flower logs a ServerApp's
    exception only once Ray has started and stopped again, long after the ServerApp failed."""
    error.fedcredit_reported = True  # type: ignore[attr-defined]
    return error


class OneLineErrors(logging.Filter):
    """Flower's log record of an exception that is a FedCreditError becomes its one line, without the traceback, or
    nothing if that line was shown already (reported); any other exception (a bug) keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, FedCreditError):
            return True
        if getattr(error, "fedcredit_reported", False):
            return False
        record.msg, record.args = "%s", (failure_line(error),)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def one_line_errors() -> None:
    """Install OneLineErrors on Flower's logger (once, however often it is called)."""
    logger = logging.getLogger(FLOWER_LOGGER)
    if not any(isinstance(f, OneLineErrors) for f in logger.filters):
        logger.addFilter(OneLineErrors())
