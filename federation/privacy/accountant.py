"""Epsilon from privacy events, and sigma calibration, with Opacus' accountants (RDP, PRV).

Composition is over all of a lender's events of the run: the accountant is rebuilt from the events,
so the epsilon after R rounds equals one accountant run over all steps at once (Flower's Opacus
example resets its PrivacyEngine every round and under-reports: 1.9 where the truth is 6.4).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from functools import cache, lru_cache

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from scipy.optimize import brentq

from federation.privacy import fast_prv
from federation.privacy.events import PrivacyEvent
from federation.privacy.fast_rdp import rdp_subsampled_gaussian

# Opacus warns when the best RDP order is the largest it tries: the bound is then valid but could be
# tighter, so the reported epsilon errs on the safe side.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")

# Opacus' RDP of one subsampled Gaussian step at one order is a pure-Python series (tenths of a second for its
# default orders), and Opacus' PRV accountant evaluates it, uncached, for every mechanism it is asked about (to size
# its domain): at 1,000 lenders that was most of a run's final accounting. Opacus' accountants therefore get the
# same series from our numpy evaluation (federation/privacy/fast_rdp.py, equal within 1e-7 relative or 1e-12
# absolute) at its default orders, once per distinct (q, sigma) in a process, and Opacus' own at any other order.
# A private Opacus function, checked against opacus 1.6.0 (pyproject allows >=1.5,<1.7); tests/test_accounting.py
# checks that Opacus' accountants receive these values.
_ORDER_INDEX = {float(order): k for k, order in enumerate(RDPAccountant.DEFAULT_ALPHAS)}


def _opacus_order(q: float, sigma: float, alpha: float) -> float:
    k = _ORDER_INDEX.get(float(alpha))
    if k is None:
        return _opacus_compute_rdp(q, sigma, alpha)
    return float(_rdp_one_step(float(sigma), float(q))[k])


if not getattr(rdp_analysis._compute_rdp, "fedcredit", False):
    _opacus_compute_rdp = rdp_analysis._compute_rdp
    _opacus_order.fedcredit = True  # type: ignore[attr-defined]
    rdp_analysis._compute_rdp = _opacus_order
else:  # this module imported a second time (importlib.reload): keep Opacus' original
    _opacus_compute_rdp = rdp_analysis._compute_rdp.__globals__["_opacus_compute_rdp"]

# Calibrated epsilon lands within this fraction *below* the target (never above).
CALIBRATION_TOLERANCE = 0.005


def default_delta(records: int) -> float:
    """1/N^1.1 with N = n rounded up to a power of two, for a lender with n records: at most
    1/n^1.1, well below 1/n as DP requires. Rounding up means lenders of similar size share a delta,
    so their sigma calibrations are shared too (a federation of 1,000 lenders calibrates a few times,
    not 1,000 times)."""
    return 1.0 / (2 ** math.ceil(math.log2(max(records, 2)))) ** 1.1


# Opacus' PRV accountant takes an *absolute* epsilon error (0.01 by default): at epsilon 0.4 that is
# 2.5%. We ask for at most this *relative* error instead, refining only where the default is too coarse.
PRV_RELATIVE_ERROR = 0.005


def compose_history(events: Iterable[PrivacyEvent]) -> list[tuple[float, float, int]]:
    """Events as (sigma, q, steps), identical mechanisms merged: composition only counts steps."""
    steps: dict[tuple[float, float], int] = {}
    for e in events:
        if e.mechanism != "gaussian" or e.sampling != "poisson":
            raise ValueError(f"accountant cannot interpret mechanism {e.mechanism}/{e.sampling}")
        if e.steps > 0:
            key = (float(e.noise_multiplier), float(e.sample_rate))
            steps[key] = steps.get(key, 0) + int(e.steps)
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def epsilon(events: Iterable[PrivacyEvent], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of all `events` composed (0 when nothing was released); never negative."""
    history = compose_history(events)
    if not history:
        return 0.0
    # Epsilon is >= 0 by definition, but both estimates can come out below 0 when the mechanism is
    # nearly private at a large delta: PRV's upper bound is found on a grid whose error (0.01 absolute)
    # exceeds the true epsilon (q 0.1, sigma 5, 1 step, delta 1e-2: -0.004), and Opacus' RDP-to-DP
    # conversion subtracts log(1/delta)/(alpha-1) terms (a lender of 2 records, q 1, sigma 3, 5 steps,
    # delta 0.47: RDP -0.09, PRV -0.47). A guarantee at epsilon < 0 implies the one at 0, so 0 is what we state.
    return max(0.0, _epsilon(tuple(sorted(history)), float(delta), accountant))


@lru_cache(maxsize=4096)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one subsampled Gaussian step at Opacus' orders. RDP composes by adding, so a lender's
    curve is sum(steps x this): each new round costs an addition, not a new series evaluation. The series is
    Opacus' (analysis/rdp.py), evaluated in numpy (federation/privacy/fast_rdp.py: about 10x faster, equal to
    Opacus' values within 1e-7 relative or 1e-12 absolute, tests/test_accounting.py)."""
    return rdp_subsampled_gaussian(sample_rate, noise_multiplier, RDPAccountant.DEFAULT_ALPHAS)


@lru_cache(maxsize=4096)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    # Cached: the planner, calibration and the coordinator ask for the same compositions repeatedly.
    if accountant == "rdp":
        # What Opacus' RDPAccountant.get_privacy_spent computes, with the one-step curves cached.
        rdp = sum(steps * _rdp_one_step(sigma, q) for sigma, q, steps in history)
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(eps)
    if accountant != "prv":
        raise ValueError(f"unknown accountant {accountant!r} (rdp or prv)")

    def prv(eps_error: float) -> float:
        # Opacus' PRVAccountant.get_epsilon, computed by federation/privacy/fast_prv.py (the same steps on a domain
        # widened to a fast FFT length, 3-6x faster, equal within 1e-6 relative: tests/test_accounting.py).
        return fast_prv.epsilon(history, delta, eps_error, lambda h, d: _epsilon(tuple(h), d, "rdp"))

    # Opacus' PRV takes log(0) at the edge of its grid when q is large; the result is still finite.
    with np.errstate(divide="ignore"):
        eps = prv(0.01)
        if PRV_RELATIVE_ERROR * eps < 0.01:
            eps = prv(max(PRV_RELATIVE_ERROR * eps, 1e-4))
    return eps


def epsilons(events: Iterable[PrivacyEvent], delta: float) -> dict[str, float]:
    """Epsilon under each of Opacus' accountants: a report states both."""
    events = list(events)
    return {name: epsilon(events, delta, name) for name in ("rdp", "prv")}


@lru_cache(maxsize=1024)
def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    guess: float | None = None,
) -> float:
    """Smallest sigma (to tolerance) whose epsilon after `steps` steps is at most the target.

    Opacus' get_noise_multiplier bisects (15-20 accountant evaluations); Brent's method on log sigma
    needs about 6-8, which keeps the planner under 2 s for a table of targets. The answer is then
    checked with the same accountant, so it is never above the target.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target epsilon must be positive and finite, got {target_epsilon}")
    event = lambda sigma: [PrivacyEvent(0, 0, sigma, sample_rate, steps, 1.0)]  # noqa: E731
    aim = target_epsilon * (1 - CALIBRATION_TOLERANCE / 2)

    @cache
    def gap(log_sigma: float) -> float:
        return epsilon(event(math.exp(log_sigma)), delta, accountant) - aim

    # Bracket around the moments-accountant estimate sigma ~ 2 q sqrt(T log(1/delta)) / epsilon.
    # (or around the caller's guess, e.g. interpolated from sigmas already calibrated for other targets).
    width = 0.03 if guess else 0.4
    guess = guess or max(0.5, 2 * sample_rate * math.sqrt(steps * math.log(1 / delta)) / target_epsilon)
    low, high = math.log(guess) - width, math.log(guess) + width
    while gap(low) < 0:
        low -= max(width, 0.2)
    while gap(high) > 0:
        high += max(width, 0.2)
        if high > math.log(1e6):
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon} at delta {delta}")
    log_sigma = brentq(gap, low, high, xtol=1e-3)
    sigma = math.exp(log_sigma)
    while epsilon(event(sigma), delta, accountant) > target_epsilon:  # root found from below: step to the safe side
        sigma *= 1.001
    return float(sigma)


def steps_per_epoch(records: int, batch_size: int) -> int:
    """Opacus' Poisson loader draws ceil(n / B) batches per epoch at rate q = 1 / that."""
    return max(1, math.ceil(records / batch_size))


def sample_rate(records: int, batch_size: int) -> float:
    return 1.0 / steps_per_epoch(records, batch_size)
