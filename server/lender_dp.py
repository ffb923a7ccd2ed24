"""Lender-level DP around the FedAvg server update (see federation.privacy.lender_level_mechanism).

The coordinator samples lenders (Poisson, rate q), adds the Gaussian noise to the sum of clipped updates,
records one lender-granularity PrivacyEvent per round and stops before a round that would take the federation
past its epsilon. Every round counts, even one where nobody was sampled: the release (noise alone) still
happens and amplification already accounts for the sampling.

Who this protects against: the coordinator adds the noise and sees every clipped update, so lender-level DP
protects a lender against whoever sees only the released models, never against the coordinator. Sampling and
noise come from a CSPRNG (unless the run asked for seeded, not private, noise). The ledger names who was sampled
in each round (its rosters), so against a reader of the ledger there is no amplification by sampling: each
lender is then protected by the Gaussian mechanism composed over the rounds it was sampled in, and the report
states that epsilon too (`epsilon_known_sampling`).
"""

from __future__ import annotations

import secrets

import numpy as np
from flwr.app import ArrayRecord

from federation.config import RunConfig
from federation.privacy.accountant import calibrate_noise, default_delta, epsilon
from federation.privacy.budget import PrivacyBudget
from federation.privacy.events import PrivacyEvent
from federation.privacy.lender_level_mechanism import noised_mean_update
from federation.privacy.noise import SecureRandomness, SeededRandomness

FEDERATION = -1  # the "lender" field of a lender-level event: the whole federation


class LenderLevelDP:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.q = cfg.lender_sample_rate
        delta = cfg.delta or default_delta(cfg.lenders)
        sigma = cfg.noise_multiplier or calibrate_noise(cfg.epsilon, delta, self.q, cfg.rounds, cfg.accountant)
        self.budget = PrivacyBudget(cfg.epsilon, delta, cfg.accountant, sigma=sigma)
        if cfg.reproducible_noise_not_private:
            self._rng = np.random.default_rng([cfg.seed, 1])
            self._randomness = SeededRandomness(cfg.seed)
        else:
            self._rng = np.random.default_rng(secrets.randbits(128))
            self._randomness = SecureRandomness()

    def event(self, rnd: int) -> PrivacyEvent:
        return PrivacyEvent(
            FEDERATION,
            rnd,
            float(self.budget.sigma),
            self.q,
            1,
            self.cfg.clip_norm,
            neighbouring="add_or_remove_one_lender",
            granularity="lender",
        )

    def admits(self, rnd: int) -> bool:
        return self.budget.admits(self.event(rnd))

    def sample(self, lenders: list[int]) -> list[int]:
        """Each lender independently with probability q (not a fixed-size sample)."""
        keep = self._rng.random(len(lenders)) < self.q
        return [lender for lender, k in zip(lenders, keep, strict=False) if k]

    def aggregate(self, rnd: int, global_arrays: ArrayRecord, updates: list[ArrayRecord]) -> ArrayRecord:
        state = global_arrays.to_torch_state_dict()
        new = noised_mean_update(
            state,
            [u.to_torch_state_dict() for u in updates],
            self.cfg.clip_norm,
            float(self.budget.sigma),
            self.q * self.cfg.lenders,
            self._randomness.normal,
        )
        self.budget.record(self.event(rnd))
        return ArrayRecord(new)


def known_sampling_epsilon(sigma: float, rounds_sampled: int, delta: float, accountant: str) -> float:
    """Epsilon of one lender against someone who knows in which rounds it was sampled: the Gaussian mechanism
    (sensitivity C, noise sigma C), without subsampling, composed over those rounds."""
    events = [
        PrivacyEvent(
            FEDERATION,
            0,
            sigma,
            1.0,
            rounds_sampled,
            1.0,
            neighbouring="add_or_remove_one_lender",
            granularity="lender",
        )
    ]
    return epsilon(events, delta, accountant) if rounds_sampled else 0.0
