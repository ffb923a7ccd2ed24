"""A lender's epsilon budget: its events so far, and whether one more release still fits.

State is plain data (the events and the calibrated sigma), so it survives in Flower's Context.state
as JSON and a run folder can be re-checked from it. The guard is conservative by construction: a
release is admitted only if epsilon of *all* events including it is within the budget, so no
lender's final epsilon can exceed its budget whatever the round count, sigma or sample rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from federation.privacy.accountant import epsilon
from federation.privacy.events import PrivacyEvent


@dataclass
class PrivacyBudget:
    budget: float
    delta: float
    accountant: str = "rdp"
    events: list[PrivacyEvent] = field(default_factory=list)
    sigma: float | None = None  # calibrated once per run, then kept

    def spent(self) -> float:
        return epsilon(self.events, self.delta, self.accountant)

    def admits(self, planned: PrivacyEvent) -> bool:
        return epsilon([*self.events, planned], self.delta, self.accountant) <= self.budget

    def record(self, event: PrivacyEvent) -> None:
        self.events.append(event)

    def to_json(self) -> str:
        return json.dumps(
            {
                "budget": self.budget,
                "delta": self.delta,
                "accountant": self.accountant,
                "sigma": self.sigma,
                "events": [e.to_dict() for e in self.events],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PrivacyBudget:
        raw = json.loads(text)
        return cls(
            raw["budget"],
            raw["delta"],
            raw["accountant"],
            [PrivacyEvent.from_dict(e) for e in raw["events"]],
            raw["sigma"],
        )
