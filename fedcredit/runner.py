"""Run a federation on one machine: validate the input, set up every party as it would set itself up, then run the
ServerApp and ClientApp on an engine.

Each party's secrets stay in its own folder, beside the run folder and never in it:
    RUN/                the run folder (public: what a regulator receives)
    RUN-keys/           the coordinator's signing key and checkpoint key
    RUN-lenders/lender_NNN/   each simulated lender's own folder: its policy (written from the command-line options,
                        as if the lender had written its own), and the identity key it made itself (clients/home.py)
    RUN-registry.json   the key registry built from what the lenders and the coordinator publish (public keys only):
                        the trust anchor `fedcredit verify RUN --registry RUN-registry.json` checks against, and
                        the keys each lender pinned

Engines:
- "simulation": Flower's simulation runtime (Ray), one virtual SuperNode per lender; each finds its folder through
  $FEDCREDIT_LENDERS_DIR (set here, before Ray starts);
- "inprocess" (the default): the same apps on an in-process Grid (fedcredit/inprocess_grid.py): no engine start
  cost; each lender's node config names its folder.

Ctrl-C: the KeyboardInterrupt reaches run_federation's cleanup (the staging folder, new keys) and run()'s (the
lenders' folders, the registry, the keys) on either engine; on the simulation engine, where the ServerApp runs in a
thread of Flower's and the interrupt reaches only the main thread, a stop event ends that thread (its Grid raises
at its next wait: fedcredit/stoppable_grid.py) and the processes Ray started are stopped by id. Flower's runtime can
hang on its way out of an interrupt (its worker threads wait on Ray actors that are being torn down), so an
interrupted simulation run also arms a last resort (`_HardStop`): HARD_STOP_S after the Ctrl-C it stops Ray's
processes, removes what the run made and ends the process with exit code 130, whatever Flower is still waiting on.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil

from federation.config import RunConfig
from federation.errors import ConfigError
from federation.runfolder import default_run_dir

if TYPE_CHECKING:
    from fedcredit.lender_processes import LenderProcesses


def flower_environment(project_root: Path | None = None) -> None:
    """Flower settings every entry point needs (before Flower starts anything)."""
    root = project_root or Path.cwd()
    os.environ.setdefault("FLWR_HOME", str(root / ".flwr"))
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


def quiet_flower(level: int = logging.WARNING) -> Callable[[], None]:
    """Flower's log at `level`, each line printed once; returns the function that puts the level back.

    Flower logs every message exchange at INFO, and Opacus installs a root handler that would print each of those
    lines a second time: Flower's own handler keeps them, the root logger gets none (for good: clients/app.py
    stops the propagation too, as soon as the ClientApp is imported)."""
    import flwr.common.logger  # noqa: F401  (Flower sets its logger to DEBUG when first imported)

    flwr_logger = logging.getLogger("flwr")
    before = flwr_logger.level
    flwr_logger.setLevel(level)
    flwr_logger.propagate = False
    return lambda: flwr_logger.setLevel(before)


def validate(cfg: RunConfig, lender_processes: LenderProcesses | None = None):
    """Load every lender's data once, so bad input fails before anything is written or started; then check
    that each privacy unit's delta gives a meaningful guarantee (it depends on the unit's count). With
    `lender_processes`, each lender is loaded in the process that keeps it for the run, all processes at once."""
    from federation.data import describe
    from federation.privacy.limits import check_delta

    summary = describe(cfg, _loaded_in(lender_processes) if lender_processes is not None else None)
    if lender_processes is not None:
        # This process read the whole dataset to validate it (the pooled holdout's count, a file's values): with
        # lender processes, each lender's records are kept by its own process, and the coordinator's keeps none
        # (before, the whole synthetic market or CSV stayed in its caches for the run; tests/test_redteam_procs.py).
        from federation.data import forget_loaded

        forget_loaded()
    if cfg.dp and cfg.dp_level == "lender":  # the unit is a lender: n is the number of lenders
        check_delta(cfg.lenders, cfg.delta, "the federation (lender-level DP)", unit="lenders")
    elif cfg.dp:  # the unit is a training record: the delta a lender uses (cfg.delta or its default) for its n
        for lender, records in enumerate(summary.lender_records):
            check_delta(records, cfg.delta, f"lender {lender}")
    return summary


def _loaded_in(lender_processes: LenderProcesses):
    """describe's lenders loaded in the lender processes, each process its own lenders; the first refusal is the
    lowest lender's, as loaded one after another."""
    from federation.data.pipeline import describe_lenders

    def each(cfg: RunConfig, lenders: list[int]):
        parts, refused = [], None
        results = lender_processes.call_each(describe_lenders, cfg)
        for got, failed in results:
            parts += got
            if failed is not None and (refused is None or failed[0] < refused[0]):
                refused = failed
        if refused is None and sorted(p.lender for p in parts) != sorted(lenders):
            raise RuntimeError("the lender processes do not hold every lender")
        return parts, refused

    return each


@contextmanager
def lenders_in_processes(cfg: RunConfig, parties: Parties, processes: int) -> Iterator[LenderProcesses | None]:
    """The in-process engine's lenders in `processes` processes (0: one per CPU), started before any lender is
    loaded and stopped at the end (at once on an error or Ctrl-C); None where they would be one process."""
    processes = processes or available_cpus()
    if cfg.engine != "inprocess" or processes < 2 or cfg.lenders < 2:
        yield None
        return
    # Imported here, so that every process starts with them imported (the ClientApp and the data pipeline).
    import federation.data.pipeline  # noqa: F401
    from clients.app import app as client_app
    from clients.app import prepare_process
    from fedcredit.inprocess_grid import lender_contexts
    from fedcredit.lender_processes import LenderProcesses

    prepare_process()  # what every lender process would import and warm up on its own, done once, shared by all
    pool = LenderProcesses(client_app, lender_contexts(cfg.lenders, 1, _node_configs(cfg, parties)), processes)
    try:
        yield pool
    except BaseException:
        pool.close(at_once=True)
        raise
    pool.close()


def _node_configs(cfg: RunConfig, parties: Parties) -> dict[int, dict]:
    from clients.session import IN_MEMORY

    return {i: {"lender-dir": str(parties.lender(i)), IN_MEMORY: True} for i in range(cfg.lenders)}


@dataclass(frozen=True)
class Parties:
    """Where each party of a one-machine run keeps its own things (the coordinator's keys: keys_dir_for)."""

    run_dir: Path

    @property
    def lenders(self) -> Path:
        return Path(f"{self.run_dir}-lenders")

    @property
    def registry(self) -> Path:
        return Path(f"{self.run_dir}-registry.json")

    def lender(self, lender: int) -> Path:
        from federation.audit_trail.keys import lender_name

        return self.lenders / lender_name(lender)


def set_up_parties(
    cfg: RunConfig,
    parties: Parties,
    canaries: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    data_dirs: dict[int, str] | None = None,
):
    """Every party as it would set itself up: the coordinator makes its key, each lender makes its folder, policy
    and identity key (`fedcredit lender init`, run here on each simulated lender's behalf), and the registry is
    built from the public keys they publish. `data_dirs`: a lender whose records are in a folder of its own.
    Returns the registry."""
    from clients.home import init_lender
    from federation.audit_trail.keys import COORDINATOR, keys_dir_for, load_or_create, public_hex
    from federation.lender_policy import for_simulated_lender
    from federation.registry import Registry

    coordinator = public_hex(load_or_create(keys_dir_for(cfg.output_dir, cfg.keys_dir), COORDINATOR))

    def set_up(lender: int) -> str:
        folder = parties.lender(lender)
        audit = ""
        if canaries and lender in canaries:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            audit = str(folder / "audit-canaries.npz")
            np.savez(audit, x=canaries[lender][0], y=canaries[lender][1])
        own = cfg.replace(data_dir=str(Path(data_dirs[lender]).resolve())) if data_dirs and lender in data_dirs else cfg
        return init_lender(folder, for_simulated_lender(own, lender, str(parties.registry), audit))

    # Each lender's folder is its own, and most of a set-up is the kernel creating its files (four a lender, about
    # 1-5 ms on this machine's disk): threads overlap them (1,000 lenders: 3-7 s one after another, about half with
    # two threads). The registry lists the lenders in order whatever order they finished in.
    with ThreadPoolExecutor(max_workers=min(8, available_cpus())) as pool:
        lenders = dict(enumerate(pool.map(set_up, range(cfg.lenders))))
    registry = Registry(coordinator, lenders)
    registry.write(parties.registry)
    return registry


def resume_config(run_dir: str | Path) -> RunConfig:
    """The configuration of the unfinished run for `run_dir`, from its ledger's first entry."""
    import json

    target = Path(run_dir).resolve()
    left = sorted(target.parent.glob(f".{target.name}.partial-*"), key=lambda p: p.stat().st_mtime)
    if target.exists() or not left:
        raise ConfigError(f"no unfinished run to resume at {target}")
    ledger = left[-1] / "ledger.jsonl"
    try:
        first = json.loads(ledger.read_text().splitlines()[0])
        cfg = RunConfig.from_record(first["body"]["config"])
    except (OSError, IndexError, KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read the unfinished run's configuration from {ledger}: {exc}") from None
    recorded = Path(cfg.output_dir).resolve() if cfg.output_dir else None
    if recorded != target:
        raise ConfigError(f"the unfinished run in {left[-1]} belongs to {recorded}, not to {target}: resume {recorded}")
    return cfg


# What `fedcredit run` says when Ctrl-C stopped it (`RunInterrupted`; the last resort below says the same).
STOPPED_NEW_RUN = "nothing was written"
STOPPED_RESUMED_RUN = "the unfinished run is kept, to be resumed again"
STOPPED_FINISHED_RUN = "the run had finished: {path} is complete, its keys, lenders' folders and registry kept"
HARD_STOP_S = 7.0  # after Ctrl-C, the longest a simulation run waits for Flower and Ray before it ends itself


class RunInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt (Ctrl-C, or SIGTERM in the CLI) that stopped `run`, after its cleanup; `what` says what it
    left: nothing, the unfinished run to resume, or (the interrupt came as the engine shut down) the finished run."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _HardStop:
    """The last resort of an interrupted simulation run. Flower's runtime, interrupted, tears down Ray's actors while
    its worker threads (not daemons) may still wait on them; on a loaded machine that once held the run for more than
    80 s. Armed by the signal, it waits HARD_STOP_S; unless run()'s own cleanup has ended by then (`disarm`), it stops
    Ray's processes by id, removes what the run made (`leave_nothing`), says what the CLI would say and ends the
    process (os._exit: nothing else may run after it). A caller that catches the interrupt in time keeps its process
    (a notebook, a sweep); the CLI then ends its own past Flower's threads (`finish_interrupt`)."""

    def __init__(self, leave_nothing: Callable[[], None], what: Callable[[], str]) -> None:
        self._leave_nothing = leave_nothing
        self._what = what
        self._lock = threading.Lock()  # the watchdog against disarm: the process ends, or the watchdog stands down
        self._ended = threading.Event()
        self._processes: list[psutil.Process] = []
        self._armed = False

    def arm(self, processes: list[psutil.Process]) -> None:
        global _SIMULATION_INTERRUPTED
        if self._armed:
            return
        self._armed, self._processes, _SIMULATION_INTERRUPTED = True, processes, True
        threading.Thread(target=self._watch, name="fedcredit-hard-stop", daemon=True).start()

    def disarm(self) -> None:
        """run()'s cleanup is done: the watchdog stands down (or, already at work, ends the process first)."""
        with self._lock:
            self._ended.set()

    def _watch(self) -> None:
        if self._ended.wait(HARD_STOP_S):
            return
        with self._lock:
            if self._ended.is_set():
                return
            _kill(self._processes, wait_s=1.0)
            self._leave_nothing()
            _exit_now(130, f"interrupted: {self._what()}\n")


_SIMULATION_INTERRUPTED = False  # a simulation run of this process was interrupted: Flower may have left threads


def finish_interrupt() -> None:
    """The CLI has reported an interrupt. If it stopped a simulation run and a thread that is not a daemon still runs
    (Flower's workers, waiting on Ray), the interpreter's exit would wait for it: end the process now, exit code 130.
    Else return, and the caller exits as it would."""
    main = threading.main_thread()
    if _SIMULATION_INTERRUPTED and any(t.is_alive() and not t.daemon and t is not main for t in threading.enumerate()):
        _exit_now(130)


def _exit_now(code: int, message: str = "") -> None:
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):  # a closed or broken stream must not keep the process alive
            stream.flush()
    if message:
        with suppress(OSError):
            os.write(2, message.encode())
    os._exit(code)


def _finished(target: Path) -> bool:
    """Whether `target` holds a committed run: a RunFolder's target is absent or empty until the commit moves the whole
    staging folder, ledger included, into place (a keys folder inside it would make it non-empty, not a run)."""
    return (target / "ledger.jsonl").is_file()


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def run(
    cfg: RunConfig,
    on_round: Callable | None = None,
    resume: bool = False,
    canaries: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    lender_processes: int = 1,
) -> Path:
    """Run `cfg` and return the finished run folder (with `resume`, finish a killed run of `cfg`).

    `canaries`: an auditor's canaries for one lender ({lender: (x, y)}), handed to that lender's folder only.
    `lender_processes`: the in-process engine's lenders work in this many processes in parallel (0: one per CPU
    this process may use); the run's results do not depend on it.

    Interrupted (KeyboardInterrupt), it removes what it made, unless the run folder was committed before the interrupt
    took effect (its keys, lenders' folders and registry are what verifying it needs), and raises RunInterrupted."""
    from federation.audit_trail.keys import keys_dir_for
    from federation.runfolder import RunFolder

    if lender_processes < 0:
        raise ConfigError(f"lender-processes must be 0 (one per CPU) or more, got {lender_processes}")
    flower_environment()
    cfg = cfg.replace(output_dir=str(Path(cfg.output_dir or default_run_dir()).resolve()))
    parties = Parties(Path(cfg.output_dir))
    target, keys_dir = Path(cfg.output_dir), keys_dir_for(cfg.output_dir, cfg.keys_dir).resolve()
    if keys_dir == target or target in keys_dir.parents:
        # the run folder must be empty until its commit, and is public: the coordinator's private key is not in it
        raise ConfigError(f"keys-dir {keys_dir} is inside the output folder {target}: give it a folder of its own")
    there_before = _finished(target)  # a folder of another run: the engine refuses it; it never counts as this run's
    # The coordinator's side removes its staging folder as it stops (server/loop.py), unless a resumed run's; run()
    # removes it too, for a ServerApp thread still busy when the interrupt's wait for it ended.
    staging = [] if resume else [RunFolder.staging_for(target)]
    # A keys folder that was there before stays, with what was in it; the keys this run made in it go.
    keys_before = {p.name for p in keys_dir.iterdir()} if not resume and keys_dir.is_dir() else None
    made: list[Path] = []

    def committed() -> bool:
        return not there_before and _finished(target)

    def leave_nothing() -> None:
        if committed():
            return
        for path in [*staging, *made]:
            _remove(path)
        if keys_before is not None and keys_dir.is_dir():
            for path in keys_dir.iterdir():
                if path.name not in keys_before:
                    _remove(path)

    def what() -> str:
        if committed():
            return STOPPED_FINISHED_RUN.format(path=target)
        return STOPPED_RESUMED_RUN if resume else STOPPED_NEW_RUN

    hard_stop = _HardStop(leave_nothing, what)
    try:
        # The lender processes are stopped (the with block's end) before their folders are removed below: a lender
        # still working would write into a folder being removed, and leave it behind.
        with lenders_in_processes(cfg, parties, lender_processes) as processes:
            summary = validate(cfg, processes)
            if not resume and not cfg.card_sha256:
                cfg = cfg.replace(card_sha256=summary.card_sha256)  # every lender must hold this card; none takes ours
            if not resume:
                # the coordinator's keys folder (RUN-keys, or --keys-dir) is made first: set_up_parties makes its key
                made += [p for p in (keys_dir, parties.lenders, parties.registry) if not p.exists()]
                set_up_parties(cfg, parties, canaries)
            _run_engine(cfg, parties, on_round, resume, processes, hard_stop)
    except BaseException as exc:
        # secrets made for a run that did not finish protect nothing: leave no trace of them
        leave_nothing()
        hard_stop.disarm()
        if isinstance(exc, KeyboardInterrupt):
            raise RunInterrupted(what()) from None
        raise
    if not target.is_dir():
        raise RuntimeError(f"the run ended without writing {target}; see the messages above")
    return target


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run_engine(
    cfg: RunConfig,
    parties: Parties,
    on_round: Callable | None,
    resume: bool,
    lender_processes: LenderProcesses | None = None,
    hard_stop: _HardStop | None = None,
) -> None:
    from clients.app import app as client_app
    from clients.session import LENDERS_DIR_ENV
    from server.app import _print_progress, make_server_app

    server_app = make_server_app(cfg, on_round=on_round or _print_progress, resume=resume)
    if cfg.engine == "inprocess":
        from flwr.app import Context, RecordDict

        from fedcredit.inprocess_grid import InProcessGrid

        grid = InProcessGrid(
            client_app, cfg.lenders, node_configs=_node_configs(cfg, parties), lender_processes=lender_processes
        )
        server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
        return
    _run_simulation(cfg, parties, server_app, client_app, LENDERS_DIR_ENV, hard_stop)


def _run_simulation(
    cfg: RunConfig, parties: Parties, server_app, client_app, lenders_dir_env: str, hard_stop: _HardStop | None = None
) -> None:
    """The apps on Flower's Ray simulation runtime. Ctrl-C (SIGINT) stops the ServerApp's thread, so that its
    cleanup runs, and every process Ray started, before the KeyboardInterrupt goes on."""
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedcredit.stoppable_grid import StoppableGrid, Stopped

    stop = threading.Event()
    server_threads: list[threading.Thread] = []
    outer = ServerApp()

    @outer.main()
    def main(grid: Grid, context) -> None:
        server_threads.append(threading.current_thread())
        with suppress(Stopped):  # the main thread was interrupted and raises KeyboardInterrupt: nothing to add here
            server_app(StoppableGrid(grid, stop), context)

    ray_processes: list[psutil.Process] = []
    ours_before = {p.pid for p in psutil.Process().children(recursive=True)}  # not Ray's: never stopped here
    flwr_log = logging.getLogger("flwr")
    flwr_log_was_disabled = flwr_log.disabled

    def interrupt(signum: int, frame: object) -> None:
        # Ctrl-C or SIGTERM: the ServerApp's thread stops at its next wait; Flower's runtime, interrupted, terminates its
        # actors and shuts Ray down, which leaves the actors that were training running, no longer our children: the
        # processes Ray started are listed now, and those still running afterwards are stopped below, by id.
        if stop.is_set():  # a second Ctrl-C while the first one's cleanup runs: let it finish (seconds)
            return
        stop.set()
        # What Flower logs from here on is its own teardown: a task whose actor died under it, logged at ERROR with
        # a traceback, forty lines before the run's one line (a red team's find). The interrupt is the user's.
        flwr_log.disabled = True
        ray_processes[:] = [p for p in psutil.Process().children(recursive=True) if p.pid not in ours_before]
        if hard_stop is not None:
            hard_stop.arm(ray_processes)
        raise KeyboardInterrupt

    # SIGTERM (a job scheduler, `timeout`; cli.py makes it a KeyboardInterrupt) the same way: raised as it was, it
    # stopped neither the ServerApp's thread nor the processes Ray started (tests/test_interrupt.py).
    previous = (
        {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        if threading.current_thread() is threading.main_thread()
        else {}
    )
    try:
        with _simulation_environment(lenders_dir_env, parties.lenders), _quiet_simulation(), _keep_our_sigterm():
            run_simulation(
                server_app=outer,
                client_app=client_app,
                num_supernodes=cfg.lenders,
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": {"logging_level": logging.ERROR, "log_to_driver": True},
                },
            )
    except BaseException:
        stop.set()  # the ServerApp's thread raises Stopped at its next wait, and its cleanup removes what it made
        for thread in server_threads:
            thread.join(timeout=STOP_WAIT_S)
        _kill(ray_processes, wait_s=STOP_WAIT_S)  # none unless interrupted: else Flower has shut Ray down
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        flwr_log.disabled = flwr_log_was_disabled


@contextmanager
def _simulation_environment(lenders_dir_env: str, lenders: Path) -> Iterator[None]:
    """The environment Ray's workers inherit, while the simulation runs:
    - where the lenders' folders are: each lender finds its own;
    - Flower's log, errors only (unless the user set FLWR_LOG_LEVEL): its warnings there are about its own machinery
      (each actor says "Manually terminating ClientAppActor" as Flower ends it), nothing a user can act on;
    - no failure signal handler of Ray's (unless the user set RAY_DISABLE_FAILURE_SIGNAL_HANDLER): it printed a stack
      dump ("*** SIGTERM received at time=...") for a SIGTERM, which stops a run like Ctrl-C."""
    values = {lenders_dir_env: str(lenders)}
    for name, value in (("FLWR_LOG_LEVEL", "ERROR"), ("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")):
        if name not in os.environ:
            values[name] = value
    os.environ.update(values)
    try:
        yield
    finally:
        for name in values:
            os.environ.pop(name, None)


@contextmanager
def _keep_our_sigterm() -> Iterator[None]:
    """ray.init replaces the process's SIGTERM handler with one of its own (sys.exit(15)): SIGTERM then ended a run with
    exit code 15 and no line, the processes Ray started unlisted and no hard stop armed. While the simulation runs
    Ray's one way to register it, ray._private.utils.set_sigterm_handler, registers nothing. Where a Ray lacks it,
    Ray's handler applies (tests/test_interrupt.py's SIGTERM test on Ray then fails)."""
    try:
        from ray._private import utils as ray_utils

        register = ray_utils.set_sigterm_handler
    except (ImportError, AttributeError):
        yield
        return
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = register


STOP_WAIT_S = 5.0  # how long an interrupted run waits for the ServerApp's thread to finish its step and clean up


def _kill(processes: list[psutil.Process], wait_s: float) -> None:
    """SIGKILL each process that still runs, by id, and wait for them."""
    for process in processes:
        with suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=wait_s)


class _DropRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


@contextmanager
def _quiet_simulation() -> Iterator[None]:
    """Silence, while the simulation engine runs, the two library warnings the user can do nothing about:
    Flower's deprecation of run_simulation (fedcredit calls it; README says what the engine is for and that
    `flwr run` is the supported way to a Flower runtime), and Ray's notice that a future Ray will stop hiding GPUs
    from workers asked for num_gpus=0 (fedcredit asks for none and trains on the CPU)."""
    flwr_logger = logging.getLogger("flwr")
    dropped = _DropRunSimulationDeprecation()
    flwr_logger.addFilter(dropped)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message="Tip: In future versions of Ray, Ray will no longer override accelerator",
                category=FutureWarning,
            )
            yield
    finally:
        flwr_logger.removeFilter(dropped)
