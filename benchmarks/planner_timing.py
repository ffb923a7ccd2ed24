"""Planner timings: seconds to calibrate sigma for a table of target epsilons (RDP and PRV).

    python -m benchmarks.planner_timing

Times the planning computation in one process (median of repeats, accountant caches cleared before
each repeat); the `fedcredit plan` command adds about 3 s of Python/torch import on this machine.
"""

from __future__ import annotations

import statistics
import time

from federation.privacy import accountant, planner

CASES = [  # records per lender, batch, local epochs, rounds
    (300, 64, 1, 5),
    (2400, 64, 1, 10),
    (20000, 64, 1, 20),
    (100000, 256, 1, 50),
]
TARGETS = [0.5, 1.0, 2.0, 4.0, 8.0]


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        accountant._epsilon.cache_clear()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    print("| records | batch | epochs | rounds | steps | RDP, 1 target (s) | RDP, 5 targets (s) | PRV, 1 target (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for records, batch, epochs, rounds in CASES:
        mech = planner.record_level(records, batch, epochs, rounds)
        one = _time(lambda mech=mech: planner.plan(mech, [3.0], [], ["rdp"]), 3)
        five = _time(lambda mech=mech: planner.plan(mech, TARGETS, [], ["rdp"]), 3)
        prv = _time(lambda mech=mech: planner.plan(mech, [3.0], [], ["prv"], calibrate_with="prv"), 1)
        print(
            f"| {records} | {batch} | {epochs} | {rounds} | {mech.total_steps} | {one:.2f} | {five:.2f} | {prv:.2f} |"
        )


if __name__ == "__main__":
    main()
