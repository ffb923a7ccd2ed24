"""The coordinator's one failure: the federation cannot go on."""

from __future__ import annotations

from federation.errors import FedCreditError


class RunFailed(FedCreditError):
    """The federation could not complete (a lender failed or broke the message contract)."""
