"""`python -m clients.supernode POLL_S FLOWER_SUPERNODE_ARGS...`: Flower's SuperNode, looking for messages sooner.

flwr 1.42's SuperNode (flwr/supernode/start_client_internal.py) waits a fixed 3 s after every pull from the
SuperLink that found no message, and 0.5 s between looks for its ClientApp's reply; neither has an option. A round
is two messages per lender (six with secure aggregation), each sent after the coordinator has the previous replies,
so the SuperNode is usually asleep when it arrives: the wait was most of a deployed round. This launcher runs
Flower's own `flower-supernode` entry point with those waits capped at POLL_S (clients/join.py passes 0.25 s: four
pulls a second while idle, each a small request to the SuperLink). Only the `time` that module sees is changed
(private API, checked with flwr 1.42.0; tests/test_lender_worker.py fails if the waits it caps are not there).
"""

from __future__ import annotations

import sys
import time
import types

IDLE_WAIT_S = 3.0  # what flwr 1.42.0 sleeps after an empty pull: the wait this launcher exists to cap


def capped_time(poll_s: float) -> types.SimpleNamespace:
    """The `time` module, but a sleep of more than `poll_s` sleeps `poll_s`."""
    names = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    return types.SimpleNamespace(**{**names, "sleep": lambda seconds: time.sleep(min(seconds, poll_s))})


def main(argv: list[str]) -> None:
    import flwr.supernode.start_client_internal as node
    from flwr.supernode.cli import flower_supernode

    poll_s = float(argv[0])
    node.time = capped_time(poll_s)  # type: ignore[assignment]
    sys.argv = ["flower-supernode", *argv[1:]]
    flower_supernode()


if __name__ == "__main__":
    main(sys.argv[1:])
