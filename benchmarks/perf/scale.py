"""Scale: many lenders, few sampled per round. Seconds per round and peak resident memory.

    python -m benchmarks.perf.scale                      # 10, 100 and 1,000 lenders (1,000 borrowers each)
    python -m benchmarks.perf.scale --one 1000 --per-round 100 --rounds 20 --lender-processes 2 --phases

Synthetic market with 1,000 borrowers per lender (1,000 lenders = 1,000,000 borrowers), DP on,
record level, up to 100 lenders drawn per round (`lenders-per-round`), the in-process engine. Each
size runs in its own process so that its peak memory is its own. Per-round cost should follow the
number of lenders sampled, not the number of lenders in the federation. Each size runs with the lenders in the
run's process and in lender processes of their own (`--lender-processes`, default 1 and 2), side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from benchmarks.perf.common import machine, peak_rss_mb, quiet


def one(lenders: int, per_round: int, rounds: int, records_per_lender: int, processes: int = 1) -> dict:
    quiet()
    from fedcredit.runner import run
    from federation.config import RunConfig

    per_round = min(per_round, lenders)
    cfg = RunConfig(
        records=lenders * records_per_lender,
        lenders=lenders,
        lenders_per_round=per_round if per_round < lenders else 0,
        rounds=rounds,
        engine="inprocess",
        epsilon=3.0,
        delta=1e-5,
    )  # explicit: the market's smallest lenders are too small for the default rule
    round_seconds: list[float] = []
    pss: list[float] = []

    measuring = [0.0]  # the seconds the memory measurement itself took (reading every process's page map)
    round_ends: list[float] = []  # perf_counter at each round's end, before the memory measurement

    def on_round(summary) -> None:
        round_ends.append(time.perf_counter())
        round_seconds.append(summary.seconds)
        if len(round_seconds) == rounds:  # every lender loaded, every process at its largest: measured once
            start = time.perf_counter()
            pss.append(proportional_set_mb())
            measuring[0] = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run(cfg.replace(output_dir=str(Path(tmp) / "run")), on_round=on_round, lender_processes=processes)
        total = time.perf_counter() - start
    rounds_sorted = sorted(round_seconds)
    # Setup splits into the start-up (validation, the lenders' folders and keys, manifests: everything before round
    # 1 begins; it also holds round 1's few milliseconds of bookkeeping after its summary) and the closing (the
    # lenders' final statements, the closing entry, model and report). Without a round there is no split.
    startup = round_ends[0] - round_seconds[0] - start if round_ends else None
    closing = total - (round_ends[-1] - start) - measuring[0] if round_ends else None
    setup = total - sum(round_seconds) - measuring[0]
    return {
        "lenders": lenders,
        "sampled": per_round,
        "borrowers": cfg.records,
        "rounds": rounds,
        "processes": processes,
        "seconds_per_round_median": rounds_sorted[len(rounds_sorted) // 2] if rounds_sorted else None,
        "total_seconds": total,
        # outside the rounds, less the memory measurement (not the run's work)
        "setup_seconds": setup,
        "startup_seconds": startup,
        "closing_seconds": closing,
        # the rest of the setup: between one round's end and the next one's start (the rounds' own bookkeeping)
        "between_rounds_seconds": None if startup is None or closing is None else setup - startup - closing,
        "memory_measurement_seconds": measuring[0],
        "peak_rss_mb": peak_rss_mb(),
        "last_round_pss_mb": pss[0] if pss else None,
        # the lender processes' largest peak (they share the run's pages copy-on-write: not to be added up)
        "lender_process_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if processes > 1
        else None,
    }


# Where a run's time goes outside its rounds: each function's total seconds, timed by wrapping it (--phases).
PHASES = (
    ("clients.app", "prepare_process"),  # the warm-up before the lender processes fork (imported where it is used)
    ("fedcredit.runner", "validate"),
    ("fedcredit.runner", "set_up_parties"),
    ("server.enrolment", "collect_manifests"),
    ("server.run_outputs", "collect_finals"),
    ("server.run_outputs", "write_outputs"),
    ("server.evaluation", "evaluate_round"),
)


@contextmanager
def time_phases() -> Iterator[dict[str, float]]:
    """Each of PHASES wrapped where its caller looks it up, for the block; the dict fills in as the run goes."""
    import functools
    import importlib

    spent: dict[str, float] = {}
    undo: list[tuple[Any, str, object]] = []
    callers = {  # the modules that import each by name (`from server.loop import ...`)
        "prepare_process": "clients.app",
        "validate": "fedcredit.runner",
        "set_up_parties": "fedcredit.runner",
        "collect_manifests": "server.round_driver",
        "collect_finals": "server.loop",
        "write_outputs": "server.loop",
        "evaluate_round": "server.round_driver",
    }
    for module, name in PHASES:
        original = getattr(importlib.import_module(module), name)

        def timed(*args, _f=original, _name=f"{module}.{name}", **kwargs):
            start = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - start

        functools.update_wrapper(timed, original)
        for where in {module, callers[name]}:
            target = importlib.import_module(where)
            if getattr(target, name, None) is original:
                setattr(target, name, timed)
                undo.append((target, name, original))
    try:
        yield spent
    finally:
        for target, name, original in undo:
            setattr(target, name, original)


def proportional_set_mb() -> float:
    """This process's and its children's memory now, each shared page counted once in all (the sum of their PSS):
    the lender processes share the run's pages copy-on-write, so their resident sizes are not to be added up."""
    import psutil

    me = psutil.Process()
    return sum(p.memory_full_info().pss for p in [me, *me.children(recursive=True)]) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", type=int, help="run one size in this process and print its JSON")
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--records-per-lender", type=int, default=1000)
    parser.add_argument("--lender-processes", default="1,2", help="with --one: one number; else a list")
    parser.add_argument("--phases", action="store_true", help="with --one: also each setup phase's seconds")
    args = parser.parse_args(argv)
    if args.one:
        processes = int(args.lender_processes.split(",")[0])
        timing: AbstractContextManager[dict[str, float]] = time_phases() if args.phases else nullcontext({})
        with timing as spent:
            result = one(args.one, args.per_round, args.rounds, args.records_per_lender, processes)
        if args.phases:
            result["phase_seconds"] = {k: round(v, 4) for k, v in spent.items()}
        print(json.dumps(result))
        return
    print(
        f"machine: {machine()}; {args.records_per_lender} borrowers per lender, DP epsilon 3, {args.rounds} rounds",
        end="\n\n",
    )
    print(
        "| lenders | sampled per round | borrowers | lender processes | seconds per round (median) | setup seconds "
        "| of which before round 1 | of which after the last round | of which between rounds "
        "| peak RSS (MB) | largest lender process peak RSS (MB) | all processes at the last round, PSS (MB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, processes in [(int(s), int(p)) for s in args.sizes.split(",") for p in args.lender_processes.split(",")]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.perf.scale",
                "--one",
                str(size),
                "--per-round",
                str(args.per_round),
                "--rounds",
                str(args.rounds),
                "--records-per-lender",
                str(args.records_per_lender),
                "--lender-processes",
                str(processes),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:  # what the size's process said, not only that it failed
            sys.exit(f"size {size}, {processes} lender processes, failed:\n{out.stderr[-4000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        children = r["lender_process_peak_rss_mb"]
        print(
            f"| {r['lenders']} | {r['sampled']} | {r['borrowers']:,} | {r['processes']} | "
            f"{r['seconds_per_round_median']:.2f} | {r['setup_seconds']:.1f} | {r['startup_seconds']:.1f} | "
            f"{r['closing_seconds']:.1f} | {r['between_rounds_seconds']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{'-' if children is None else f'{children:.0f}'} | {r['last_round_pss_mb']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
