"""Red team: the lender's long-lived worker (clients/worker.py) against a coordinator that crafts its messages.

Claims attacked (the coordinator runs the ServerApp and the SuperLink, so it chooses every message a lender's
SuperNode receives, its type, its content and when it stops the run):
1. what answers is the lender's installed code (tests/test_lender_worker.py has the deployment attack with a
   hostile bundled ClientApp; here, that what a message carries names neither the lender's folder nor its records);
2. every limit of clients/dp_round.py holds through the worker as in a ClientApp process per message: nothing the
   worker keeps in memory between messages (records read before the lender edited its data, its policy, the
   Flower Context of another task, a lock left by an exception) lets a coordinator do what it could not before;
3. a message the worker cannot answer gets an error reply and the worker goes on serving (a malformed message, a
   task without its message, a refused push, a task the SuperNode ends while it runs); a crafted message type
   reaches exactly the handler Flower's own ClientApp would call, or none;
4. tasks are served one at a time;
and that clients/supernode.py changes only the SuperNode's idle waits.

The worker is driven through a fake of the SuperNode's Runtime API (FakeRuntime): the real worker code pulls and
inflates each message, answers, and pushes the reply and the context as it does against a SuperNode.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.common.serde import context_to_proto, message_to_proto
from flwr.proto.message_pb2 import (
    ConfirmMessageReceivedResponse,
    PullObjectResponse,
    PushObjectResponse,
)
from flwr.proto.run_pb2 import Run
from flwr.proto.runtime_pb2 import (
    AcquireTaskResponse,
    PullAppMessagesResponse,
    PullTaskInputResponse,
    PushAppMessagesResponse,
    PushTaskOutputResponse,
    SendTaskHeartbeatResponse,
)
from flwr.proto.task_pb2 import Task
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.task_identity import TaskIdentity

import clients.app as app
from clients import session, supernode, worker
from clients.home import LenderHome, init_lender
from federation.data import forget_loaded
from federation.lender_policy import for_simulated_lender, load_policy
from federation.messages import ARRAYS, CONFIG, MANIFEST, SECAGG, run_config_record
from tests.test_data import _own_data


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch):
    """Each test starts as a new worker would: nothing in memory, records checked at every message (as
    clients/worker.py main sets it), a task identity set, and a SIGINT that is recorded instead of ending pytest
    (Flower's task heartbeat raises one in the process it runs in)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 7
    monkeypatch.setattr(session, "LONG_LIVED", True)
    session.forget_records()
    signals: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: signals.append(number))
    yield signals
    signal.signal(signal.SIGINT, previous)
    session.forget_records()


def _lender(tmp_path, lender: int = 0, labels=None):
    cfg = _own_data(tmp_path / f"data-{lender}", labels or [int(i % 3 == 0) for i in range(120)])
    init_lender(tmp_path / f"lender-{lender}", for_simulated_lender(cfg, lender))
    return LenderHome(tmp_path / f"lender-{lender}").folder, cfg


def _context(folder, lender_id: int = 0, run_id: int = 1, run_config=None) -> Context:
    return Context(
        run_id=run_id,
        node_id=7,
        node_config={"lender-dir": str(folder), "lender-id": lender_id},
        state=RecordDict(),
        run_config=run_config or {},
    )


def _message(cfg, kind: str, rnd: int = 1, extra=None, arrays: ArrayRecord | None = None) -> Message:
    config = ConfigRecord({**dict(run_config_record(cfg)), "server-round": rnd, **(extra or {})})
    content = RecordDict({CONFIG: config} if arrays is None else {CONFIG: config, ARRAYS: arrays})
    return Message(content, dst_node_id=7, message_type=kind)


# ---- a fake of the SuperNode's Runtime API ----------------------------------------------------------------------


class Stop(BaseException):
    """No task left: ends `worker.serve` (as SIGTERM does a real worker)."""


@dataclasses.dataclass
class FakeTask:
    message: Message
    context: Context
    fault: str = ""  # "no-message", "junk-object", "push-refused", "ended" (the SuperNode ended it: heartbeats fail)


class FakeRuntime:
    """The Runtime API of a SuperNode holding `tasks`, each handed out once, in order."""

    def __init__(self, tasks: list[FakeTask]) -> None:
        self.tasks, self.current = list(tasks), None
        self.task_id = 0
        self.outputs: list[tuple[str, str, Context | None]] = []  # (sub-status, details, context pushed back)
        self.replies: list[Message] = []
        self.acquired_while_running = 0
        self.heartbeat = threading.Event()
        self._pushed: dict[str, bytes] = {}
        self._trees: list = []

    def AcquireTask(self, request):
        if self.current is not None:
            self.acquired_while_running += 1
        if not self.tasks:
            raise Stop
        self.current, self.task_id = self.tasks.pop(0), self.task_id + 1
        return AcquireTaskResponse(task=Task(task_id=self.task_id), token=f"token-{self.task_id}")

    def PullTaskInput(self, request):
        context = self.current.context
        return PullTaskInputResponse(
            task_id=self.task_id, run=Run(run_id=context.run_id), context=context_to_proto(context)
        )

    def PullMessages(self, request):
        if self.current.fault == "no-message":
            return PullAppMessagesResponse()
        message = self.current.message
        return PullAppMessagesResponse(
            messages_list=[message_to_proto(remove_content_from_message(message))],
            message_object_trees=[get_object_tree(message)],
        )

    def PullObject(self, request):
        objects = get_all_nested_objects(self.current.message)
        content = objects[request.object_id].deflate()
        if self.current.fault == "junk-object":
            content = b"not an object"
        return PullObjectResponse(object_found=True, object_available=True, object_content=content)

    def ConfirmMessageReceived(self, request):
        return ConfirmMessageReceivedResponse()

    def SendTaskHeartbeat(self, request):
        if self.current is not None and self.current.fault == "ended":
            self.heartbeat.set()
            return SendTaskHeartbeatResponse(success=False)
        return SendTaskHeartbeatResponse(success=True)

    def PushMessages(self, request):
        if self.current.fault == "push-refused":
            raise httpx.HTTPStatusError("refused", request=httpx.Request("POST", "x"), response=httpx.Response(400))
        self._trees.append(request.message_object_trees[0])
        ids = [request.message_object_trees[0].object_id]
        stack = list(request.message_object_trees[0].children)
        while stack:
            tree = stack.pop()
            ids.append(tree.object_id)
            stack.extend(tree.children)
        return PushAppMessagesResponse(objects_to_push=ids, session_id="s")

    def PushObject(self, request):
        self._pushed[request.object_id] = request.object_content
        return PushObjectResponse(stored=True)

    def PushTaskOutput(self, request):
        from flwr.common.serde import context_from_proto

        context = context_from_proto(request.context) if request.HasField("context") else None
        self.outputs.append((request.sub_status, request.details, context))
        if self._trees:  # the reply this task pushed, as the SuperNode would rebuild it
            tree = self._trees.pop()
            self.replies.append(
                pull_and_inflate_object_from_tree(tree, lambda i: self._pushed[i], lambda i: None, return_type=Message)
            )
        self.current = None
        return PushTaskOutputResponse()

    def close(self) -> None:
        pass


def _serve(monkeypatch, tasks: list[FakeTask], handlers) -> FakeRuntime:
    runtime = FakeRuntime(tasks)
    monkeypatch.setattr(worker, "_client", lambda *args, **kwargs: runtime)
    with pytest.raises(Stop):
        worker.serve("127.0.0.1:1", handlers, poll=0.0)
    return runtime


def _recording(log: list, kind: str):
    def handler(msg: Message, context: Context) -> Message:
        log.append((kind, msg.metadata.message_type))
        return Message(RecordDict({"seen": ConfigRecord({"kind": kind})}), reply_to=msg)

    return handler


def _recorders(log: list) -> dict:
    return {kind: _recording(log, kind) for kind in app.HANDLERS}


# ---- claim 3: routing ---------------------------------------------------------------------------------------------


def test_a_message_type_reaches_exactly_the_handler_flowers_own_clientapp_would_call(tmp_path, monkeypatch):
    """Flower's ClientApp (clients/app.py `app`, the same handlers) routes 'train' and 'train.default' to train,
    'query.NAME' to the query NAME and refuses anything else; the worker must route the same, so that a crafted
    type ('query.train', a bare 'manifest', 'query.warm_up', 'query.__init__', 'train.x') reaches nothing more."""
    routes = {
        "train": "train",
        "train.default": "train",
        "evaluate": "evaluate",
        "evaluate.default": "evaluate",
        **{f"query.{kind}": kind for kind in app.HANDLERS if kind not in ("train", "evaluate")},
    }
    # the worker's routes are Flower's: every name the ClientApp registered, under its default action for the two
    flower = set(app.app._registered_funcs)
    assert {name if "." in name else f"{name}.default" for name in routes} == flower
    crafted = [
        "query.train",
        "query.evaluate",
        "query.warm_up",
        "query.__init__",
        "query.HANDLERS",
        "query.default",
        "query",
        "train.x",
        "train.manifest",
        "evaluate.final",
        "get_parameters",
        "reconnect",
    ]
    malformed = ["query.manifest.x", "manifest", "secagg_unmask", "final", "query.", ""]  # no Message carries these
    log: list = []
    handlers = _recorders(log)

    def crafted_message(kind: str) -> Message:
        msg = _message(_own_data(tmp_path, [0, 1]), "query.x")
        msg.metadata.__dict__["_message_type"] = kind  # as the coordinator's own message proto may carry it
        return msg

    for kind, handler in routes.items():
        reply, status, _ = worker.answer(crafted_message(kind), Context(1, 7, {}, RecordDict(), {}), handlers)
        assert status == "completed" and log.pop() == (handler, kind)
    for kind in crafted:
        reply, status, details = worker.answer(crafted_message(kind), Context(1, 7, {}, RecordDict(), {}), handlers)
        assert reply.has_error() and status == "failed" and f"no '{kind}' message" in details, kind
    # A malformed type: Flower will not inflate such a message; the task fails and the worker serves the next.
    folder, cfg = _lender(tmp_path)
    tasks = [FakeTask(crafted_message(kind), _context(folder)) for kind in malformed]
    tasks.append(FakeTask(_message(cfg, "query.manifest"), _context(folder)))
    runtime = _serve(monkeypatch, tasks, handlers)
    assert [status for status, _, _ in runtime.outputs] == ["failed"] * len(malformed) + ["completed"]
    assert {details for _, details, _ in runtime.outputs[:-1]} == {"the task's input could not be read"}
    assert log == [("manifest", "query.manifest")]  # no crafted type reached any handler


# ---- claim 3: nothing the coordinator sends ends the worker -------------------------------------------------------


def test_a_task_the_worker_cannot_read_or_answer_gets_its_failed_status_and_the_worker_serves_the_next(
    tmp_path, monkeypatch
):
    folder, cfg = _lender(tmp_path)
    log: list = []
    handlers = {**_recorders(log), "final": lambda msg, ctx: (_ for _ in ()).throw(RuntimeError("boom"))}
    faults = ["no-message", "junk-object", "push-refused", ""]
    tasks = [FakeTask(_message(cfg, "query.manifest"), _context(folder), fault) for fault in faults]
    tasks.insert(3, FakeTask(_message(cfg, "query.final"), _context(folder)))  # the handler raises
    tasks.append(FakeTask(_message(cfg, "query.manifest"), _context(folder)))
    runtime = _serve(monkeypatch, tasks, handlers)
    statuses = [status for status, _, _ in runtime.outputs]
    assert statuses == ["failed", "failed", "failed", "failed", "completed", "completed"]
    assert "boom" in runtime.outputs[3][1]
    assert runtime.replies[0].has_error() and "boom" in runtime.replies[0].error.reason  # the error reply went out
    assert [r.content["seen"]["kind"] for r in runtime.replies[1:]] == ["manifest", "manifest"]


def test_a_task_the_supernode_ends_while_the_worker_runs_it_does_not_end_the_worker(
    tmp_path, monkeypatch, _fresh_process
):
    """Flower's task heartbeat raises SIGINT in its process when the SuperNode no longer holds the task (a run the
    coordinator stopped, an expired claim): in a ClientApp process that ends one task, in the worker every task."""
    folder, cfg = _lender(tmp_path)
    runtime_box: list[FakeRuntime] = []

    def slow_manifest(msg: Message, context: Context) -> Message:
        assert runtime_box[0].heartbeat.wait(30)  # the SuperNode said 'no such task' while this one ran
        return Message(RecordDict({"seen": ConfigRecord({"kind": "manifest"})}), reply_to=msg)

    tasks = [
        FakeTask(_message(cfg, "query.manifest"), _context(folder), "ended"),
        FakeTask(_message(cfg, "query.manifest"), _context(folder)),
    ]
    runtime = FakeRuntime(tasks)
    runtime_box.append(runtime)
    monkeypatch.setattr(worker, "_client", lambda *args, **kwargs: runtime)
    with pytest.raises(Stop):
        worker.serve("127.0.0.1:1", {"manifest": slow_manifest}, poll=0.0)
    assert _fresh_process == []  # no SIGINT: the worker is not told to stop
    assert [status for status, _, _ in runtime.outputs] == ["completed", "completed"]


# ---- claim 4: one task at a time ----------------------------------------------------------------------------------


def test_the_worker_takes_no_task_while_it_runs_one(tmp_path, monkeypatch):
    folder, cfg = _lender(tmp_path)
    running, most = [0], [0]
    lock = threading.Lock()

    def handler(msg: Message, context: Context) -> Message:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return Message(RecordDict({"seen": ConfigRecord({"kind": "manifest"})}), reply_to=msg)
        finally:
            with lock:
                running[0] -= 1

    tasks = [FakeTask(_message(cfg, "query.manifest", rnd), _context(folder)) for rnd in range(1, 5)]
    runtime = _serve(monkeypatch, tasks, {"manifest": handler})
    assert most[0] == 1 and runtime.acquired_while_running == 0 and len(runtime.outputs) == 4


# ---- claim 2: nothing survives between tasks that a ClientApp process would not keep ------------------------------


def test_the_context_of_one_task_is_not_the_next_tasks_and_each_reply_is_its_own_messages(tmp_path, monkeypatch):
    """A task's Flower Context (its secure-aggregation secrets) comes from the SuperNode for that task and goes
    back to it; the next task, of another run, sees only its own, and its reply is addressed from its message (the
    task identity of the previous task is not used)."""
    folder, cfg = _lender(tmp_path)
    seen: list = []

    def handler(msg: Message, context: Context) -> Message:
        seen.append(("secret" in context.state, context.run_id))
        context.state["secret"] = ConfigRecord({"run": context.run_id})
        return Message(RecordDict({"seen": ConfigRecord({"kind": "manifest"})}), reply_to=msg)

    TaskIdentity.run_id = 1
    first = _message(cfg, "query.manifest")
    TaskIdentity.run_id = 2
    second = _message(cfg, "query.manifest")
    tasks = [FakeTask(first, _context(folder, run_id=1)), FakeTask(second, _context(folder, run_id=2))]
    runtime = _serve(monkeypatch, tasks, {"manifest": handler})
    assert seen == [(False, 1), (False, 2)]
    assert [dict(ctx.state["secret"])["run"] for _, _, ctx in runtime.outputs] == [1, 2]  # each back to its own
    assert [reply.metadata.run_id for reply in runtime.replies] == [1, 2]


def test_records_edited_in_place_with_their_times_kept_are_read_again(tmp_path):
    """The lender rewrites its CSV (same size, times restored, as `cp -p` onto it does): the content key of its
    records changes, and the worker must not be handed the records it read before (the data layer's own cache,
    keyed by path and file times, would)."""
    folder, cfg = _lender(tmp_path)
    msg = _message(cfg, "query.manifest")
    before, status, _ = worker.answer(msg, _context(folder), app.HANDLERS)
    assert status == "completed"
    csv = tmp_path / "data-0" / "data.csv"
    times = os.stat(csv)
    text = csv.read_text()
    flipped = text.replace(",1\n", ",x\n").replace(",0\n", ",1\n").replace(",x\n", ",0\n")
    assert len(flipped) == len(text) and flipped != text
    with open(csv, "r+") as file:  # in place: the same inode
        file.write(flipped)
    os.utime(csv, ns=(times.st_atime_ns, times.st_mtime_ns))
    after, status, _ = worker.answer(msg, _context(folder), app.HANDLERS)
    assert status == "completed"
    session.forget_records()  # what a new ClientApp process would answer: nothing in memory, no cached file
    forget_loaded()
    LenderHome(folder).records_cache.unlink()
    fresh = app.manifest(msg, _context(folder))
    commitment = lambda reply: dict(reply.content[MANIFEST])["data-commitment"]  # noqa: E731
    assert commitment(after) != commitment(before)
    assert commitment(after) == commitment(fresh)


GERMAN = Path(os.environ.get("FEDCREDIT_DATA_DIR", "/work/shared/datasets")) / "german_credit" / "germancredit.csv"


@pytest.mark.skipif(not GERMAN.is_file(), reason=f"the German credit dataset is not at {GERMAN}")
def test_a_built_in_dataset_the_lender_replaces_is_read_again(tmp_path):
    """A built-in dataset's file replaced by a plain edit (its times change): the data layer checks the times of
    a user's CSV only, so without the content key the worker would answer from the records it read first."""
    from federation.config import RunConfig

    (tmp_path / "data" / "german_credit").mkdir(parents=True)
    local = tmp_path / "data" / "german_credit" / "germancredit.csv"
    local.write_bytes(GERMAN.read_bytes())
    cfg = RunConfig(dataset="german_credit", data_dir=str(tmp_path / "data"), lenders=2, partition="iid")
    init_lender(tmp_path / "lender", for_simulated_lender(cfg, 0))
    folder = LenderHome(tmp_path / "lender").folder
    msg = _message(cfg, "query.manifest")
    count = lambda reply: dict(reply.content[MANIFEST])["records-total"]  # noqa: E731
    before = count(worker.answer(msg, _context(folder), app.HANDLERS)[0])
    lines = local.read_text().splitlines(keepends=True)
    local.write_text("".join(lines[: len(lines) // 2]))  # the lender keeps half of its records
    after = count(worker.answer(msg, _context(folder), app.HANDLERS)[0])
    assert after < before


def test_a_policy_edited_between_two_messages_rules_the_next(tmp_path):
    folder, cfg = _lender(tmp_path)
    assert cfg.epsilon <= load_policy(folder).max_epsilon
    msg = _message(cfg, "query.manifest")
    worker.answer(msg, _context(folder), app.HANDLERS)  # the worker has read the lender's folder once
    dataclasses.replace(load_policy(folder), max_epsilon=cfg.epsilon / 2).write(folder)
    train = _message(cfg, "train", arrays=ArrayRecord())
    reply, status, _ = worker.answer(train, _context(folder), app.HANDLERS)
    assert status == "completed" and reply.content["metrics"]["declined"] == 1
    assert json.loads(reply.content["attestation"]["body"])["limit"] == "max_epsilon"  # the signed refusal


def test_a_second_model_scored_in_a_round_is_refused_and_the_worker_scores_the_next_round(tmp_path):
    """One evaluation per round of a run, kept in the lender's folder under its lock: the refusal is raised
    inside that lock, and the worker (which does not exit after it) must have released it."""
    from federation.model import model_for

    folder, cfg = _lender(tmp_path)
    n_features = len(
        dict(worker.answer(_message(cfg, "query.manifest"), _context(folder), app.HANDLERS)[0].content[MANIFEST])[
            "features"
        ]
    )

    def model(scale: float) -> ArrayRecord:
        net = model_for(cfg, n_features)
        return ArrayRecord({k: v * scale for k, v in net.state_dict().items()})

    _, status, _ = worker.answer(_message(cfg, "evaluate", 1, arrays=model(1.0)), _context(folder), app.HANDLERS)
    assert status == "completed"
    _, status, details = worker.answer(_message(cfg, "evaluate", 1, arrays=model(2.0)), _context(folder), app.HANDLERS)
    assert status == "failed" and "PermissionError" in details and "one model per round" in details
    third, status, _ = worker.answer(_message(cfg, "evaluate", 2, arrays=model(2.0)), _context(folder), app.HANDLERS)
    assert status == "completed" and third.content["metrics"]["server-round"] == 2


def test_a_secure_aggregation_step_asked_twice_in_a_round_is_refused_through_the_worker(tmp_path):
    """The once-a-round rule is kept in the lender's folder, not in the worker's memory or the task's Context: the
    second 'keys' request of a round is refused though the first failed inside its step (no registry pinned), and
    another round's step is not."""
    folder, cfg = _lender(tmp_path)

    def keys(rnd: int) -> Message:
        msg = _message(cfg, "query.secagg_keys", rnd)
        msg.content[SECAGG] = ConfigRecord({})
        return msg

    _, status, details = worker.answer(keys(1), _context(folder), app.HANDLERS)
    assert status == "failed" and "key registry pinned" in details
    _, status, details = worker.answer(keys(1), _context(folder), app.HANDLERS)
    assert status == "failed" and "already took the secure-aggregation step 'keys' in round 1" in details
    _, status, details = worker.answer(keys(2), _context(folder), app.HANDLERS)
    assert status == "failed" and "already took" not in details


def test_what_the_coordinator_sends_names_neither_the_lenders_folder_nor_its_records(tmp_path):
    """The coordinator's run config and message name another lender's folder and another CSV: the worker answers
    from its node's folder and its own policy's records, signed with its own key."""
    folder, cfg = _lender(tmp_path, 0)
    other_folder, other = _lender(tmp_path, 1, labels=[int(i % 2 == 0) for i in range(300)])
    extra = {"lender-dir": str(other_folder), "lender-id": 1, "csv-path": other.csv_path, "card-path": other.card_path}
    msg = _message(other, "query.manifest", extra=extra)
    context = _context(folder, 0, run_config={"lender-dir": str(other_folder), "lender-id": 1})
    reply, status, _ = worker.answer(msg, context, app.HANDLERS)
    own = app.manifest(_message(cfg, "query.manifest"), _context(folder))
    assert status == "completed"
    assert dict(reply.content[MANIFEST]) == dict(own.content[MANIFEST])
    assert reply.content["attestation"]["public-key"] == LenderHome(folder).public_hex


# ---- the SuperNode launcher --------------------------------------------------------------------------------------


def test_the_supernode_launcher_shortens_only_the_supernodes_idle_sleeps(monkeypatch):
    import flwr.supernode.start_client_internal as node

    uses = []
    for item in ast.walk(ast.parse(inspect.getsource(node))):
        if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == "time":
            uses.append(item.attr)
    sleeps = [
        call.args[0].value
        for call in ast.walk(ast.parse(inspect.getsource(node)))
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "time"
        and isinstance(call.args[0], ast.Constant)
    ]
    assert set(uses) == {"sleep"} and sorted(sleeps) == [0.5, 0.5, 3]  # the module uses time for its waits only
    capped = supernode.capped_time(0.25)
    public = {name for name in dir(time) if not name.startswith("_")}
    assert {name for name in vars(capped)} == public
    assert all(getattr(capped, name) is getattr(time, name) for name in public - {"sleep"})
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    capped.sleep(3), capped.sleep(0.5), capped.sleep(0.1), capped.sleep(0)
    assert slept == [0.25, 0.25, 0.1, 0]  # longer waits capped, shorter ones kept


def test_the_worker_process_checks_records_at_every_message_from_its_warm_up_on(monkeypatch, tmp_path):
    """The edited-records attacks above hold only where the records are checked at each message: the worker's
    main switches that on before it reads the records ahead of its first message, so both find the same ones."""
    seen = []
    monkeypatch.setattr(session, "LONG_LIVED", False)
    monkeypatch.setattr(app, "warm_up", lambda folder: seen.append(("warm_up", session.LONG_LIVED)))
    monkeypatch.setattr(worker, "serve", lambda address, handlers: seen.append(("serve", session.LONG_LIVED)))
    # the worker's own handler for TERM is not installed in pytest's process
    monkeypatch.setattr(worker, "signal", SimpleNamespace(signal=lambda *args: None, SIGTERM=signal.SIGTERM))
    assert worker.main([str(tmp_path), "127.0.0.1:1"]) == 0
    assert seen == [("warm_up", True), ("serve", True)]
