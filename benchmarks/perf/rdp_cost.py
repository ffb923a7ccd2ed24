"""The RDP curve of one subsampled Gaussian step at Opacus' 151 default orders: Opacus' pure-Python series against
federation/privacy/fast_rdp.py (the same series in numpy), and one noise calibration as a lender makes it, side by
side in one process.

    python -m benchmarks.perf.rdp_cost [--repeats 5]

Calibration: the default run's lender (epsilon 3, about 4,000 records, batch 64, 5 rounds of one epoch), with
every cache emptied before each repeat. Medians of --repeats.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from benchmarks.perf.common import machine, timed

CASES = [(0.004, 0.7), (0.016, 1.0), (0.05, 0.7), (0.25, 2.0), (0.5, 1.2)]  # (sample rate, noise multiplier)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from opacus.accountants import RDPAccountant

    import federation.privacy.accountant as accountant
    from federation.privacy.fast_rdp import rdp_subsampled_gaussian

    opacus = accountant._opacus_compute_rdp  # Opacus' own series (Opacus' module now calls the numpy one)
    orders = RDPAccountant.DEFAULT_ALPHAS
    print(f"machine: {machine()}; {len(orders)} orders; medians of {args.repeats}")
    print("| sample rate | noise multiplier | Opacus (ms) | numpy (ms) | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for q, sigma in CASES:
        slow, _ = timed(lambda q=q, sigma=sigma: [opacus(q, sigma, a) for a in orders], args.repeats)
        fast, _ = timed(lambda q=q, sigma=sigma: rdp_subsampled_gaussian(q, sigma, orders), args.repeats)
        print(f"| {q} | {sigma} | {slow * 1e3:.1f} | {fast * 1e3:.1f} | {slow / fast:.1f}x |")

    records, batch, rounds = 4000, 64, 5
    q, steps = accountant.sample_rate(records, batch), rounds * accountant.steps_per_epoch(records, batch)
    delta = accountant.default_delta(records)

    def calibrate() -> float:
        for cached in (accountant.calibrate_noise, accountant._epsilon, accountant._rdp_one_step):
            cached.cache_clear()  # every repeat from nothing, as a lender's first round
        return accountant.calibrate_noise(3.0, delta, q, steps)

    def opacus_curve(rate: float, sigma: float, alphas) -> np.ndarray:
        return np.asarray([opacus(rate, sigma, a) for a in alphas])

    print(f"\none calibration: epsilon 3, q {q:.4f}, {steps} steps, delta {delta:.3g}")
    results = {}
    curves: list[tuple[str, Callable[..., np.ndarray]]] = [
        ("Opacus' series", opacus_curve),
        ("numpy series", rdp_subsampled_gaussian),
    ]
    for name, curve in curves:
        accountant.rdp_subsampled_gaussian = curve  # what accountant._rdp_one_step evaluates
        seconds, _ = timed(calibrate, args.repeats)
        results[name] = (seconds, calibrate())
        print(f"  {name}: {seconds:.3f} s, sigma {results[name][1]:.6f}")
    accountant.rdp_subsampled_gaussian = rdp_subsampled_gaussian


if __name__ == "__main__":
    main()
