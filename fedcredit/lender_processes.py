"""The in-process engine's lenders dealt to N forked processes, which work on a round's messages in parallel.

Each lender always goes to the same process (the k-th lender to process k mod N), which keeps its Context (the
secure-aggregation state) and its in-memory records for the whole run, as a SuperNode does. Messages cross as
Flower's wire-format bytes, both ways, as on one process.

Why fork, not spawn: a lender process starts from the run's process as it is when the engine starts, with the
ClientApp's modules imported and every lender's records already loaded and encoded by the run's validation
(fedcredit/runner.py `validate`). It starts in milliseconds, and no lender's records are read or encoded a second
time: the pages are shared copy-on-write. A spawned process would import torch again (seconds) and reload its
lenders' records. Fork needs a POSIX system; elsewhere the engine says so and the run uses one process.

Failures: a lender process that ends (killed, out of memory) leaves its lenders' messages without replies. They get
error replies, as a lender that failed would, and the coordinator's rules decide what the round does without them.
Ctrl-C is the run's process's to handle: the lender processes ignore SIGINT (a terminal sends it to the whole
foreground group) and are stopped by that process at once; they also end when it ends, whatever way, as their pipe
then closes.
"""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fedcredit.inprocess_grid import deliver, from_wire, to_wire

T = TypeVar("T")
STOP_WAIT_S = 10.0  # a normal end: each process finishes what it holds and exits on its own


def _serve(conn: Connection, client_app: ClientApp, contexts: dict[int, Context], theirs: list[Connection]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The run's own SIGTERM handler (fedcredit/cli.py: SIGTERM stops a run like Ctrl-C) is copied by fork; here it
    # would raise KeyboardInterrupt in the middle of a message, with a traceback. A TERM to the whole group, or the
    # run's own `terminate`, just ends this process: its lenders' replies become errors and the run stops anyway.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for end in theirs:  # the run's ends of every pipe made so far, copied by fork: held here, no pipe would close
        end.close()
    own = [int(context.node_config["partition-id"]) for context in contexts.values()]
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):  # the run's process closed its end, or ended
            return
        if kind == "deliver":
            out: object = [deliver(client_app, contexts[node], wire) for node, wire in payload]
        else:  # "call": a function of this process's lenders (their partition ids): its result or its error
            fn, args = payload
            try:
                out = _portable(("ok", fn(*args, own)))
            except Exception as exc:
                out = _portable(("error", exc))
        try:
            conn.send(out)
        except (BrokenPipeError, OSError):  # the run stopped while this was being worked on
            return


def _portable(out: tuple[str, object]) -> tuple[str, object]:
    """A call's answer as it will cross the pipe: itself where pickle can write and rebuild it, else the error it
    holds (or the one pickle met) as the nearest class that crosses, with the same message. An exception class that
    pickle cannot name (defined in a function) or rebuild (an __init__ of other arguments than its message) killed
    this process with a traceback, or failed in the run's process with an UnpicklingError instead of the lender's;
    a DataError subclass stays a DataError, which the CLI states in one line."""
    try:
        pickle.loads(pickle.dumps(out))  # a call's answer is small (a describe's lender parts): cheap to check
        return out
    except Exception as exc:
        held = _held_error(out[1])  # the call's own error, or the one its result holds
        return "error", _stand_in(held if held is not None else exc)


def _held_error(value: object) -> BaseException | None:
    """The first exception inside a call's result (describe_lenders returns the refused lender's with its parts)."""
    if isinstance(value, BaseException):
        return value
    if isinstance(value, tuple | list):
        for item in value:
            if (found := _held_error(item)) is not None:
                return found
    return None


def _stand_in(exc: BaseException) -> BaseException:
    for base in type(exc).__mro__:
        try:
            stand_in = base(str(exc))
            pickle.loads(pickle.dumps(stand_in))
        except Exception:
            continue
        if isinstance(stand_in, BaseException):
            return stand_in
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def _failed(wire: bytes, reason: str) -> bytes:
    return to_wire(Message(Error(code=0, reason=reason), reply_to=from_wire(wire)))


class LenderProcesses:
    def __init__(self, client_app: ClientApp, contexts: dict[int, Context], processes: int) -> None:
        if "fork" not in multiprocessing.get_all_start_methods():
            raise RuntimeError("lender processes need fork (a POSIX system): run with one lender process")
        fork = multiprocessing.get_context("fork")
        count = min(processes, len(contexts))
        self._process_of = {node: k % count for k, node in enumerate(contexts)}
        self._conns: list[Connection | None] = []
        self._procs = []
        # Every object the run's process holds now (torch, Flower, Opacus and the rest, imported) is moved out of the
        # garbage collector's reach before the forks, in this process and so in each child: a collection that walks
        # them writes to their pages, and each page written is copied, in the child that wrote it or here. Python's
        # documented way to keep forked processes sharing memory (gc.freeze). Undone at close().
        gc.freeze()
        try:
            for index in range(count):
                ours, theirs = fork.Pipe()
                own = {node: contexts[node] for node, k in self._process_of.items() if k == index}
                ends = [c for c in self._conns if c is not None] + [ours]
                proc = fork.Process(
                    target=_serve, args=(theirs, client_app, own, ends), daemon=True, name=f"lenders-{index}"
                )
                proc.start()
                theirs.close()
                self._conns.append(ours)
                self._procs.append(proc)
        except BaseException:
            self.close(at_once=True)
            raise

    def deliver_all(self, sent: list[tuple[int, bytes]]) -> list[bytes]:
        """Every (node, wire) message delivered, in parallel across the processes; the replies in the same order."""
        batches: list[list[tuple[int, bytes]]] = [[] for _ in self._conns]
        place = []
        for node, wire in sent:
            k = self._process_of[node]
            place.append((k, len(batches[k])))
            batches[k].append((node, wire))
        replies: dict[int, list[bytes]] = {}
        working = []
        for k, batch in enumerate(batches):
            conn = self._conns[k]
            if batch and conn is not None:
                try:
                    conn.send(("deliver", batch))
                    working.append(k)
                except (BrokenPipeError, OSError):
                    self._lost(k)
        for k in working:
            conn = self._conns[k]
            if conn is None:
                continue
            try:
                replies[k] = conn.recv()
            except (EOFError, OSError):
                self._lost(k)
        out = []
        for (k, j), (_, wire) in zip(place, sent, strict=True):
            got = replies.get(k)
            out.append(got[j] if got is not None else _failed(wire, f"the lender's process (lenders-{k}) ended"))
        return out

    def node_ids(self) -> list[int]:
        return list(self._process_of)

    def call_each(self, fn: Callable[..., T], *args: object) -> list[T]:
        """fn(*args, lenders) in every process, at the same time, with the partition ids of that process's lenders:
        the results, one per process. An error raised there is raised here."""
        conns: list[Connection] = []
        for k, conn in enumerate(self._conns):  # all checked before any is asked (see below)
            if conn is None:
                raise RuntimeError(f"the lender process lenders-{k} has ended")
            conns.append(conn)
        asked = []
        for conn in conns:
            try:
                conn.send(("call", (fn, args)))
                asked.append(True)
            except (BrokenPipeError, OSError):
                asked.append(False)
        # Every process's answer is read before any error is raised: one left in its pipe would be taken for the
        # replies to the next round's messages (another question's answer as those lenders' replies).
        answers: list[tuple[str, Any]] = []
        for k, conn in enumerate(conns):
            try:
                answers.append(conn.recv() if asked[k] else ("ended", None))
            except (EOFError, OSError):
                answers.append(("ended", None))
            except Exception as exc:  # an answer that could not be rebuilt here (_portable checks it there)
                answers.append(("error", RuntimeError(f"lenders-{k}'s answer cannot be read: {exc}")))
        for k, (kind, _) in enumerate(answers):
            if kind == "ended":
                self._lost(k)
        results: list[T] = []
        for k, (kind, value) in enumerate(answers):
            if kind == "ended":
                raise RuntimeError(f"the lender process lenders-{k} ended")
            if kind == "error":
                raise value if isinstance(value, BaseException) else RuntimeError(str(value))
            results.append(value)
        return results

    def _lost(self, k: int) -> None:
        conn, self._conns[k] = self._conns[k], None
        if conn is not None:
            conn.close()

    def close(self, at_once: bool = False) -> None:
        """Close every pipe, so that each process exits; with `at_once` (an error, Ctrl-C) stop them now."""
        gc.unfreeze()
        for k in range(len(self._conns)):
            self._lost(k)
        for proc in self._procs:
            if at_once:
                proc.terminate()
            proc.join(timeout=1.0 if at_once else STOP_WAIT_S)
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5.0)
