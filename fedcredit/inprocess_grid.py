"""An in-process Flower Grid: the same ClientApp and ServerApp, no Ray, no network.

Each message is serialized to Flower's protobuf wire format and back on the way to the lender and
on the way back, as in a real deployment, so nothing that could not cross a network crosses here.
Lenders run one after another in this process, each with its own persistent Context (node config
with partition-id, and state), like Flower's simulation runtime gives them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

# Flower internals, checked against flwr 1.42.0 (pyproject allows >=1.41,<2; tests/test_federation.py runs this
# engine against Flower's own simulation runtime and fails if they drift apart). Flower has no public in-process
# Grid: the wire format (serde), the Run record and the task identity that stamps messages are what its own
# simulation runtime uses to do the same.
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


class InProcessGrid(Grid):
    def __init__(
        self, client_app: ClientApp, num_nodes: int, run_id: int = 1, node_configs: dict[int, dict] | None = None
    ) -> None:
        self._client_app = client_app
        self._run = Run.create_empty(run_id=run_id)
        # Messages take their run and sender from the task identity, as under run_simulation.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._contexts = {
            1000 + i: Context(
                run_id=run_id,
                node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes, **(node_configs or {}).get(i, {})},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
        self.bytes_sent = 0  # server -> lenders
        self.bytes_received = 0  # lenders -> server

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
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid delivers synchronously: use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid delivers synchronously: use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            # Metadata a SuperLink assigns on receipt; Message has no public setter for them (flwr 1.42.0).
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            msg.metadata.__dict__["_created_at"] = time.time()
            wire = message_to_proto(msg).SerializeToString()
            self.bytes_sent += len(wire)
            delivered = message_from_proto(type(message_to_proto(msg)).FromString(wire))
            context = self._contexts[msg.metadata.dst_node_id]
            try:
                reply = self._client_app(delivered, context)
            except Exception as exc:  # a lender's failure becomes an error reply, as in Flower
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=delivered)
            wire_back = message_to_proto(reply).SerializeToString()
            self.bytes_received += len(wire_back)
            replies.append(message_from_proto(type(message_to_proto(reply)).FromString(wire_back)))
        return replies
