"""An in-process Flower Grid: the same ClientApp and ServerApp, no Ray, no network.

Each message is serialized to Flower's protobuf wire format and back on the way to the lender and
on the way back, as in a real deployment, so nothing that could not cross a network crosses here.
Each lender has its own persistent Context (node config with partition-id, and state), like Flower's
simulation runtime gives them. With `processes=1` the lenders run one after another in this process;
with more, the lenders are dealt to that many forked lender processes (lender i to process i mod N),
which work on a round's messages in parallel, each lender always in the same process
(fedcredit/lender_processes.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

# Flower internals, checked against flwr 1.42.0 (pyproject allows >=1.41,<2; tests/test_federation.py runs this
# engine against Flower's own simulation runtime and fails if they drift apart). Flower has no public in-process
# Grid: the wire format (serde), the Run record and the task identity that stamps messages are what its own
# simulation runtime uses to do the same.
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

if TYPE_CHECKING:
    from fedcredit.lender_processes import LenderProcesses


def to_wire(msg: Message) -> bytes:
    return message_to_proto(msg).SerializeToString()


def from_wire(wire: bytes) -> Message:
    return message_from_proto(ProtoMessage.FromString(wire))


def deliver(client_app: ClientApp, context: Context, wire: bytes) -> bytes:
    """One message to one lender and its reply, both in Flower's wire format."""
    delivered = from_wire(wire)
    try:
        reply = client_app(delivered, context)
    except Exception as exc:  # a lender's failure becomes an error reply, as in Flower
        reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=delivered)
    return to_wire(reply)


def lender_contexts(num_nodes: int, run_id: int = 1, node_configs: dict[int, dict] | None = None) -> dict[int, Context]:
    """Each lender's persistent Context, by node id: node config with partition-id, and state."""
    return {
        1000 + i: Context(
            run_id=run_id,
            node_id=1000 + i,
            node_config={"partition-id": i, "num-partitions": num_nodes, **(node_configs or {}).get(i, {})},
            state=RecordDict(),
            run_config={},
        )
        for i in range(num_nodes)
    }


class InProcessGrid(Grid):
    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_id: int = 1,
        node_configs: dict[int, dict] | None = None,
        processes: int = 1,
        lender_processes: LenderProcesses | None = None,
    ) -> None:
        """`processes`: the lenders in that many processes of their own, stopped by close(); `lender_processes`:
        lenders already started in processes by the caller (their Contexts made with the same run id), who stops
        them."""
        self._client_app = client_app
        self._run = Run.create_empty(run_id=run_id)
        # Messages take their run and sender from the task identity, as under run_simulation.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self.bytes_sent = 0  # server -> lenders
        self.bytes_received = 0  # lenders -> server
        self._owned = None
        self._processes = lender_processes
        self._contexts: dict[int, Context] = {}
        if self._processes is not None:
            self._nodes = self._processes.node_ids()
            return
        self._contexts = lender_contexts(num_nodes, run_id, node_configs)
        self._nodes = list(self._contexts)
        if processes > 1 and num_nodes > 1:
            from fedcredit.lender_processes import LenderProcesses

            self._processes = self._owned = LenderProcesses(client_app, self._contexts, processes)

    @property
    def runs_lenders_here(self) -> bool:
        """The lenders run in this process (one after another), not in processes of their own."""
        return self._processes is None

    def close(self, at_once: bool = False) -> None:
        """Stop the lender processes this grid started; `at_once`: without letting them finish."""
        if self._owned is not None:
            self._owned.close(at_once)

    def __enter__(self) -> InProcessGrid:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(at_once=kind is not None)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid delivers synchronously: use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid delivers synchronously: use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        sent: list[tuple[int, bytes]] = []
        for msg in messages:
            # Metadata a SuperLink assigns on receipt; Message has no public setter for them (flwr 1.42.0).
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            msg.metadata.__dict__["_created_at"] = time.time()
            wire = to_wire(msg)
            self.bytes_sent += len(wire)
            sent.append((msg.metadata.dst_node_id, wire))
        if self._processes is not None:
            back = self._processes.deliver_all(sent)
        else:
            back = [deliver(self._client_app, self._contexts[node], wire) for node, wire in sent]
        self.bytes_received += sum(len(wire) for wire in back)
        return [from_wire(wire) for wire in back]
