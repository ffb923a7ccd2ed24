"""Opacus' PRV epsilon against federation/privacy/fast_prv.py (the same computation, three steps made fast), side by
side in one process, on the histories a run's lenders sign in their final statements.

    python -m benchmarks.perf.prv_cost

Lenders of 100 to 3,200 training records, batch 64, epsilon 3 calibrated (RDP, as a run does) for 20 planned
releases of one epoch, each after 1 to 4 releases: 24 single-mechanism histories, delta 1e-5, Opacus' default
error 0.01. Each history is computed once by each (no cache), Opacus first.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.perf.common import machine


def main() -> None:
    import warnings

    from opacus.accountants import PRVAccountant

    import federation.privacy.accountant as accountant
    from federation.privacy import fast_prv

    warnings.filterwarnings("ignore", message="Optimal order")
    delta, batch, planned = 1e-5, 64, 20
    histories = []
    for records in (100, 200, 400, 800, 1600, 3200):
        q, steps = accountant.sample_rate(records, batch), accountant.steps_per_epoch(records, batch)
        sigma = accountant.calibrate_noise(3.0, delta, q, planned * steps)
        histories += [[(sigma, q, releases * steps)] for releases in (1, 2, 3, 4)]

    def opacus(history) -> float:
        acc = PRVAccountant()
        acc.history = list(history)
        return float(acc.get_epsilon(delta=delta, eps_error=0.01))

    def ours(history) -> float:
        return fast_prv.epsilon(history, delta, 0.01, lambda h, d: accountant._epsilon(tuple(h), d, "rdp"))

    seconds = {}
    values = {}
    with np.errstate(divide="ignore"):
        for name, fn in (("Opacus PRVAccountant", opacus), ("fast_prv", ours)):
            start = time.perf_counter()
            values[name] = [fn(h) for h in histories]
            seconds[name] = (time.perf_counter() - start) / len(histories)
    a, b = (np.array(v) for v in values.values())
    print(f"machine: {machine()}; {len(histories)} histories")
    print("| accountant | ms a history (mean) |")
    print("|---|---:|")
    for name, s in seconds.items():
        print(f"| {name} | {s * 1e3:.1f} |")
    print(
        f"speed-up {seconds['Opacus PRVAccountant'] / seconds['fast_prv']:.1f}x; "
        f"largest relative difference {np.max(np.abs(a - b) / a):.1e}"
    )


if __name__ == "__main__":
    main()
