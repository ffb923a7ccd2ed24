"""What the coordinator keeps in memory while the run goes (all of it is also in the ledger)."""

from __future__ import annotations

from dataclasses import dataclass, field

from federation.privacy.events import PrivacyEvent


@dataclass
class RoundSummary:
    """One finished round, as the progress line and the checkpoint state it."""

    round: int
    trained: int
    declined: int
    global_metrics: dict[str, float | None]  # None where no lender could score it
    max_epsilon: float
    seconds: float


@dataclass
class RunRecord:
    """The lenders' manifests and distinct releases, the finished rounds, why the run stopped and the final model."""

    manifests: dict[int, dict] = field(default_factory=dict)  # lender -> its signed manifest body
    releases: dict[int, list[dict]] = field(default_factory=dict)  # lender -> its distinct signed update bodies
    rounds: list[RoundSummary] = field(default_factory=list)
    stop: dict = field(default_factory=dict)  # {} or {"kind", "round", "reason"}
    model_hash: str = ""

    def events(self, lender: int) -> list[PrivacyEvent]:
        return [PrivacyEvent.from_dict(e) for body in self.releases.get(lender, []) for e in body["events"]]
