"""Shared helpers for the performance benchmarks: quiet logs, medians, peak memory, the machine."""

from __future__ import annotations

import logging
import os
import resource
import statistics
import time
import warnings


def quiet() -> None:
    from federation.training import set_torch_threads

    set_torch_threads()  # measured with one torch thread, as every fedcredit process trains
    import flwr.common.logger  # noqa: F401  (Flower sets its logger to DEBUG on import)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("flwr").propagate = False
    warnings.filterwarnings("ignore")


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return f"{os.cpu_count()} cores, {pages / 2**30:.0f} GiB memory"
