"""Asking the lenders over Flower's grid: one timeout for every request, and the inspection of a batch of replies
that the run cannot go on without (manifests), where one broken reply stops the run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flwr.app import Message
from flwr.serverapp import Grid

from federation.messages import ReplyRejected, inspect_reply
from server.errors import RunFailed

# A lender trains on its own hardware, at its own pace: a round waits up to an hour before it counts it as failed.
TIMEOUT_S = 3600.0


def ask(grid: Grid, messages: Iterable[Message]) -> list[Message]:
    """Send the messages and wait for the replies (a lender that fails or times out sends none)."""
    return list(grid.send_and_receive(messages, timeout=TIMEOUT_S))


def inspect_all(
    replies: list[Message], shapes: Mapping[str, tuple[int, ...]] | None = None
) -> list[tuple[Message, dict]]:
    """Every reply with its plain content; the first reply that breaks the contract stops the run."""
    try:
        return [(msg, inspect_reply(msg, shapes)) for msg in replies]
    except ReplyRejected as exc:
        raise RunFailed(str(exc)) from None
