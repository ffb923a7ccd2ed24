"""Asking the lenders over Flower's grid: one timeout for every request, and the inspection of a batch of replies
that the run cannot go on without (manifests), where one broken reply stops the run."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from flwr.app import Message
from flwr.serverapp import Grid
from flwr.superlink.grid.http_grid import HttpGrid

from federation.messages import ReplyRejected, inspect_reply
from server.errors import RunFailed

# A lender trains on its own hardware, at its own pace: a round waits up to an hour before it counts it as failed.
TIMEOUT_S = 3600.0
# Flower 1.42's HttpGrid (the deployed ServerApp's) looks for replies every 3 s: a plain round (train, evaluate)
# waited 6 s and a secure-aggregation round (six requests) 18 s for replies that take a fraction of that. The same
# loop on Grid's public push_messages / pull_messages, looking every POLL_S (a local HTTP call to the SuperLink).
POLL_S = 0.2


def ask(grid: Grid, messages: Iterable[Message]) -> list[Message]:
    """Send the messages and wait for the replies (a lender that fails or times out sends none)."""
    return send_and_receive(grid, messages, TIMEOUT_S)


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
    """Grid.send_and_receive, with replies pulled every POLL_S on the deployed runtime's grid."""
    if not isinstance(grid, HttpGrid):  # the in-process and simulation grids deliver without a 3 s wait
        return list(grid.send_and_receive(messages, timeout=timeout))
    waiting = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        pulled = list(grid.pull_messages(waiting))
        replies += pulled
        waiting -= {msg.metadata.reply_to_message_id for msg in pulled}
        if waiting:
            time.sleep(POLL_S)
    return replies


def inspect_all(
    replies: list[Message], shapes: Mapping[str, tuple[int, ...]] | None = None
) -> list[tuple[Message, dict]]:
    """Every reply with its plain content; the first reply that breaks the contract stops the run."""
    try:
        return [(msg, inspect_reply(msg, shapes)) for msg in replies]
    except ReplyRejected as exc:
        raise RunFailed(str(exc)) from None
