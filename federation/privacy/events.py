"""A privacy event: one lender's DP releases in one round, described as plain data.

Following dp_accounting's idea, a mechanism is data (Gaussian noise multiplier sigma, Poisson
subsampling with rate q, composed `steps` times, per-example clipping at `clip_norm`), and any
accountant can interpret a list of events. Epsilon is always recomputed from the events, never kept
as a running number alone, so a report cannot claim more than the recorded mechanism supports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PrivacyEvent:
    lender: int
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    mechanism: str = "gaussian"
    sampling: str = "poisson"
    neighbouring: str = "add_or_remove_one_record"
    granularity: str = "record"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> PrivacyEvent:
        return cls(**raw)
