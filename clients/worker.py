"""The lender's worker: its own long-lived process, which runs every ClientApp task its SuperNode receives.

Flower 1.42's SuperNode hands each message to a SuperExec, which starts a new `flwr-clientapp` process for it (its
warm executor is for Kubernetes only). That process imports Flower (about 2 s on a quiet machine), installs the
coordinator's app bundle (FAB), imports the handlers and, to train or score, torch and Opacus (5 s more, tens of
seconds on a loaded machine), and reads the lender's records: for a fraction of a second of work. A lender that
joins a federation (clients/join.py) starts its SuperNode with `--isolation process` instead, and this worker in
its place: one process that takes each task from the SuperNode's Runtime API as the SuperExec would, and answers it
with the handlers of clients/app.py, imported once, over records held in memory.

What it changes for trust:
- The code that touches the lender's folder, records and keys is the lender's own installed fedcredit, not the
  ClientApp in the bundle the coordinator ships (which `flwr-clientapp` would run on the lender's host): the worker
  reads the task's message and context and never loads or runs the bundle's code.
- Every check, limit and signature of clients/dp_round.py applies to each message exactly as in a ClientApp process.
- Tasks run one at a time, in the order the SuperNode hands them out: two requests cannot interleave.
- A message type reaches the handler Flower's ClientApp would call, or none (`kind_of`); a task it cannot read,
  answer or push fails alone, and a task the SuperNode ends mid-way does not end the worker (`task_heartbeat`).
- It does not change who can reach the SuperNode's Runtime API (127.0.0.1 and the port the lender chose, as with
  Flower's own SuperExec in subprocess isolation).
What goes through Flower's Runtime API (pull the task's message and context, push the reply and the context back)
follows flwr/supernode/runtime/run_clientapp.py of flwr 1.42.0, whose functions it calls (private API, checked
with that version).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.app.metadata import validate_message_type
from flwr.clientapp.client_app import DEFAULT_ACTION
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import (
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from clients import session

if TYPE_CHECKING:
    from clients.app import Handler

POLL_S = 0.05  # between two looks for a task: a local HTTP call to the lender's own SuperNode
# A task is handed out before its message's objects have all arrived at the SuperNode; Flower's pull of them backs
# off 1 s after the first miss (PULL_INITIAL_BACKOFF), which was most of every task. The objects come from the
# lender's own SuperNode, so it asks again sooner.
PULL_BACKOFF_S, PULL_BACKOFF_CAP_S = 0.02, 0.5


def _client(address: str, component: str, token: str | None = None) -> RuntimeHttpClient:
    interceptors: list[ProtobufClientInterceptor] = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


BY_CATEGORY = ("train", "evaluate")  # the handlers Flower's ClientApp registers as a category's default action


def kind_of(message: Message) -> str:
    """The handler a message asks for, routed as Flower's ClientApp routes it (flwr/clientapp/client_app.py):
    `train` or `train.default` -> `train` (`evaluate` alike), `query.NAME` -> the query NAME. Any other type names
    no handler (it is returned whole, prefixed, so that it never matches one): `query.train`, a bare `manifest` or
    `train.x` reach nothing a ClientApp process would not run."""
    kind = message.metadata.message_type
    if not validate_message_type(kind):
        return f"invalid:{kind}"
    category, _, action = kind.partition(".")
    action = action or DEFAULT_ACTION
    if category in BY_CATEGORY:
        return category if action == DEFAULT_ACTION else f"{category}.{action}"
    if category == "query" and action not in BY_CATEGORY:
        return action
    return f"{category}.{action}"


def answer(message: Message, context: Context, handlers: dict[str, Handler]) -> tuple[Message, str, str]:
    """The reply, the task's status and its details, as `flwr-clientapp` reports them (an exception becomes an
    error reply naming it, as Flower's ClientApp process makes it)."""
    try:
        kind = kind_of(message)
        if kind not in handlers:
            raise ValueError(f"this lender answers no '{message.metadata.message_type}' message")
        return handlers[kind](message, context), SubStatus.COMPLETED, ""
    except Exception as exc:
        reason = f"{type(exc)}:<'{exc}'>"
        error = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
        return error, SubStatus.FAILED, reason


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context]:
    """The task's message and context: flwr 1.42's run_clientapp.pull_task_input with a shorter back-off, and
    without the app bundle (the worker does not run the coordinator's code)."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context = context_from_proto(res.context)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode handed out a task without its message")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=PULL_BACKOFF_S,
        backoff_cap=PULL_BACKOFF_CAP_S,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower sets it: the object id is the message's
    return message, context


def task_heartbeat(client: RuntimeHttpClient) -> Callable[[], bool]:
    """The task's heartbeat, but one that never signals the process. Flower's (make_task_heartbeat_fn_http)
    raises SIGINT in its process when the SuperNode no longer holds the task (a run the coordinator stopped, an
    expired claim): that ends one ClientApp process, but here it would end the worker and every later task.
    The worker finishes the task instead, and the SuperNode refuses or drops what it pushes."""
    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            client.SendTaskHeartbeat(request)
        except httpx.HTTPError:
            return False  # retried by HeartbeatSender, with its back-off
        return True

    return beat


def run_task(address: str, token: str, handlers: dict[str, Handler]) -> str:
    """One task: pull its message and context, answer, push the reply and the context. Returns what was done."""
    client = _client(address, "flwr-clientapp", token)
    heartbeat = HeartbeatSender(task_heartbeat(client))
    heartbeat.start()
    context: Context | None = None
    status, details, kind = SubStatus.FAILED, "the task's input could not be read", "?"
    try:
        message, context = pull_task_input(client)
        kind = message.metadata.message_type
        reply, status, details = answer(message, context, handlers)
        try:
            push_message(client, reply, context)
        except Exception as exc:
            status, details = SubStatus.FAILED, f"the reply could not be pushed ({type(exc).__name__}: {exc})"
            raise
    finally:
        push_task_output(client=client, context=context, sub_status=status, details=details)
        heartbeat.stop()
        client.close()
    return f"{kind}: {status}"


def serve(address: str, handlers: dict[str, Handler], poll: float = POLL_S) -> None:
    """Take ClientApp tasks from the SuperNode at `address` (its Runtime API) until stopped."""
    client = _client(address, "SuperExec")
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[])
    try:
        while True:
            res = client.AcquireTask(request)
            if res.HasField("task") and res.token:
                started = time.perf_counter()
                try:
                    done = run_task(address, res.token, handlers)
                except Exception as exc:  # a task it could not read or push: its status is failed, the next comes
                    done = f"task {res.task.task_id}: failed ({type(exc).__name__}: {exc})"
                print(f"{done} in {time.perf_counter() - started:.2f} s", file=sys.stderr, flush=True)
            else:
                time.sleep(poll)
    finally:
        client.close()


def main(argv: list[str]) -> int:
    """`python -m clients.worker LENDER_DIR RUNTIME_ADDRESS`: what clients/join.py starts beside the SuperNode."""
    if len(argv) != 2:
        print("usage: python -m clients.worker LENDER_DIR RUNTIME_ADDRESS", file=sys.stderr)
        return 2
    from clients.app import HANDLERS, warm_up

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the lender's process group stops it with TERM
    session.LONG_LIVED = True  # this process answers every message of its lender: records checked at each one
    warm_up(Path(argv[0]))  # after the line above, so the records it reads are the ones the first message finds
    serve(argv[1], HANDLERS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
