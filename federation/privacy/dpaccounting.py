"""The same privacy events interpreted by Google's dp_accounting (RDP and PLD).

A second, independent implementation of the accounting: tests cross-check it against Opacus' RDP
and PRV accountants, and a verifier can recompute every epsilon with it without trusting the code
path that trained. Each event is a Poisson-subsampled Gaussian composed `steps` times.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import dp_accounting
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
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
    """Epsilon at `delta` with dp_accounting's RDP ("rdp") or PLD ("pld") accountant."""
    event = dp_event(events)
    if not event.events:
        return 0.0
    if accountant == "rdp":
        acc = RdpAccountant(orders=RDP_ORDERS)
    elif accountant == "pld":
        acc = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    else:
        raise ValueError(f"unknown dp_accounting accountant '{accountant}' (choose rdp or pld)")
    acc.compose(event)
    return float(acc.get_epsilon(delta))
