"""The same privacy events interpreted by Google's dp_accounting (RDP and PLD).

A second, independent implementation of the accounting: tests cross-check it against Opacus' RDP
and PRV accountants, and a verifier can recompute every epsilon with it without trusting the code
path that trained. Each event is a Poisson-subsampled Gaussian composed `steps` times.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache

import dp_accounting
import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib
from opacus.accountants.rdp import RDPAccountant as OpacusRDP

from federation.privacy.accountant import compose_history
from federation.privacy.events import PrivacyEvent

# dp_accounting's RDP logs (through absl) each order whose series did not converge; it drops that
# order, which can only loosen the bound, so the result stays valid.
logging.getLogger("absl").setLevel(logging.ERROR)

# The RDP orders Opacus uses, so the two RDP accountants differ only by implementation.
RDP_ORDERS = tuple(OpacusRDP.DEFAULT_ALPHAS)
# PLD grid: 1e-4 (dp_accounting's default) keeps the discretization error well under 1%.
PLD_DISCRETIZATION = 1e-4


def dp_event(events: Iterable[PrivacyEvent]) -> dp_accounting.DpEvent:
    """All events composed, as one dp_accounting event."""
    parts = []
    for sigma, q, steps in compose_history(events):
        step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        parts.append(dp_accounting.SelfComposedDpEvent(step, steps))
    return dp_accounting.ComposedDpEvent(parts)


def epsilon(events: Iterable[PrivacyEvent], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` with dp_accounting's RDP ("rdp") or PLD ("pld") accountant.

    The verifier recomputes a lender's epsilon after every release, so the one-step analyses are cached: RDP
    composes by adding (steps x the one-step curve, what RdpAccountant does for a self-composed event), and a PLD
    composes by convolution (the single-step PLD self-composed `steps` times, what PLDAccountant does). Cross-checked
    against Opacus in tests/test_accounting.py."""
    return _epsilon(tuple(sorted(compose_history(events))), delta, accountant)


@lru_cache(maxsize=4096)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    """`epsilon` of a composed history, remembered: the verifier asks for the same lender's history more than once
    (its final statement's epsilons and the report's per-lender ones), and a PLD epsilon is a second or more."""
    if not history:
        return 0.0
    if accountant == "rdp":
        rdp = sum(steps * _rdp_one_step(sigma, q) for sigma, q, steps in history)
        return max(0.0, float(rdp_lib.compute_epsilon(RDP_ORDERS, rdp, delta)[0]))  # epsilon >= 0 always
    if accountant == "pld":
        parts = [_pld_one_step(sigma, q).self_compose(steps) for sigma, q, steps in history]  # history: not empty
        composed = parts[0]
        for part in parts[1:]:
            composed = composed.compose(part)
        return max(0.0, float(composed.get_epsilon_for_delta(delta)))
    raise ValueError(f"unknown dp_accounting accountant '{accountant}' (choose rdp or pld)")


@lru_cache(maxsize=1024)
def _rdp_one_step(sigma: float, q: float) -> np.ndarray:
    # dp_accounting's own per-order analysis of the Poisson-subsampled Gaussian (the function its RdpAccountant calls).
    # Private dp_accounting API, checked against dp-accounting 0.6.0: no public call returns the per-order RDP of
    # one step, and caching it per (sigma, q) is what keeps the verifier's recomputation fast.
    return np.asarray(rdp_lib._compute_rdp_poisson_subsampled_gaussian(q, sigma, RDP_ORDERS))


@lru_cache(maxsize=256)
def _pld_one_step(sigma: float, q: float):
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma, sampling_prob=q, value_discretization_interval=PLD_DISCRETIZATION
    )
