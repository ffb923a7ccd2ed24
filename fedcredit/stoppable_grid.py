"""A Grid that stops waiting when told to: how an interrupted simulation run ends its ServerApp's thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class Stopped(BaseException):
    """Raised in the ServerApp's thread when the main thread was interrupted (a BaseException, so that no
    `except Exception` of the rounds takes it for a lender's failure): run_federation's cleanup runs on the way out."""


class StoppableGrid(Grid):
    """The simulation runtime's Grid, with a stop event checked while waiting for replies.

    Flower's run_simulation runs the ServerApp in a thread of its own and the Ray engine in the main thread; a
    Ctrl-C reaches only the main thread, and the ServerApp thread would go on waiting for replies that no lender
    sends any more (up to server/messaging.py's hour a round), holding the process and its staging folder."""

    POLL_S = 0.1  # as Flower's InMemoryGrid

    def __init__(self, grid: Grid, stop: threading.Event) -> None:
        self._grid = grid
        self._stop = stop

    def _check(self) -> None:
        if self._stop.is_set():
            raise Stopped

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._check()
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's InMemoryGrid.send_and_receive, stopping when the stop event is set."""
        waiting = set(self.push_messages(messages))
        end = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        while timeout is None or time.monotonic() < end:
            pulled = list(self.pull_messages(waiting))
            replies.extend(pulled)
            waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not waiting:
                break
            self._stop.wait(self.POLL_S)
        return replies
