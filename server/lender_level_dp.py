"""Lender-level DP as a strategy wrapper: DP-FedAvg with a fixed denominator (McMahan, Ramage, Talwar and Zhang,
ICLR 2018, "Learning Differentially Private Recurrent Language Models", arXiv:1710.06963), around the FedAvg
server update (see federation.privacy.lender_level_mechanism), as Flower's
DifferentialPrivacyServerSideFixedClipping wraps any strategy.

The wrapper samples lenders (Poisson, rate q), clips each update, adds the Gaussian noise to their sum and divides
by the expected count q N (never by the number really sampled, which would leak it), records one
lender-granularity PrivacyEvent per round and stops before a round that would take the federation past its
epsilon. Every round counts, even one where nobody was sampled: the release (noise alone) still happens and
amplification already accounts for the sampling.

Who this protects against: the coordinator adds the noise and sees every clipped update, so lender-level DP
protects a lender against whoever sees only the released models, never against the coordinator. Sampling and
noise come from a CSPRNG (unless the run asked for seeded, not private, noise). The ledger names who was sampled
in each round (its rosters), so against a reader of the ledger there is no amplification by sampling: each
lender is then protected by the Gaussian mechanism composed over the rounds it was sampled in, and the report
states that epsilon too (`epsilon_known_sampling`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federation.audit_trail.run_view import RunView, stop_reason
from federation.config import RunConfig
from federation.messages import ARRAYS
from federation.privacy.accountant import calibrate_noise, default_delta, epsilon, epsilons
from federation.privacy.budget import PrivacyBudget
from federation.privacy.events import PrivacyEvent
from federation.privacy.lender_level_mechanism import noised_mean_update
from federation.privacy.noise import SecureRandomness, SeededRandomness, noise_source
from server.coordinator_strategy import CoordinatorStrategy, RoundAggregate
from server.run_record import RunRecord
from server.secure_rounds import SecureRound

FEDERATION = -1  # the "lender" field of a lender-level event: the whole federation


class LenderLevelDPStrategy(CoordinatorStrategy):
    """Wraps the run's Flower strategy: samples its lenders, admits a round only within the budget, and replaces
    its aggregation with the clipped, noised mean of the updates."""

    # Neither the sampling generator's nor the noise's state is checkpointed: a lender-level run cannot resume.
    keeps_checkpoints = False

    def __init__(self, cfg: RunConfig, strategy: Strategy, lender_of_node: Mapping[int, int]) -> None:
        super().__init__(cfg, strategy, lender_of_node)
        self.q = cfg.lender_sample_rate
        delta = cfg.delta or default_delta(cfg.lenders)
        sigma = cfg.noise_multiplier or calibrate_noise(cfg.epsilon, delta, self.q, cfg.rounds, cfg.accountant)
        self.budget = PrivacyBudget(cfg.epsilon, delta, cfg.accountant, sigma=sigma)
        self._randomness: SeededRandomness | SecureRandomness
        if cfg.reproducible_noise_not_private:
            self._rng = np.random.default_rng([cfg.seed, 1])
            self._randomness = SeededRandomness(cfg.seed)
        else:
            self._rng = np.random.default_rng(secrets.randbits(128))
            self._randomness = SecureRandomness()

    def event(self, rnd: int) -> PrivacyEvent:
        """Round `rnd`'s release: one Gaussian mechanism over the federation, lenders subsampled at rate q."""
        return PrivacyEvent(
            FEDERATION,
            rnd,
            self.noise_multiplier,
            self.q,
            1,
            self.cfg.clip_norm,
            neighbouring="add_or_remove_one_lender",
            granularity="lender",
        )

    @property
    def noise_multiplier(self) -> float:
        # Read from the budget (which always holds one, calibrated or given), where the ledger's sigma is kept.
        return float(self.budget.sigma or 0.0)

    def stop_before(self, rnd: int) -> dict:
        if self.budget.admits(self.event(rnd)):
            return {}
        stop = {"kind": "lender_level_budget", "round": rnd}
        return {**stop, "reason": stop_reason(stop, self.cfg.epsilon)}

    def sample(self, lenders: list[int]) -> list[int]:
        """Each lender independently with probability q (not a fixed-size sample)."""
        keep = self._rng.random(len(lenders)) < self.q
        return [lender for lender, k in zip(lenders, keep, strict=False) if k]

    def configure_train(self, rnd: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """The wrapped strategy's training messages, for the lenders this round's Poisson sample drew."""
        messages = super().configure_train(rnd, arrays, config, grid)
        sampled = set(self.sample(sorted(self.lender_of_node.values())))
        return [m for m in messages if self.lender_of_node[m.metadata.dst_node_id] in sampled]

    def asks_every_lender(self) -> bool:
        return False  # a sampled lender that declines says nothing about the others

    def mechanism(self) -> dict:
        return {
            **super().mechanism(),
            "noise_multiplier": self.budget.sigma,
            "lender_sample_rate": self.q,
            "noise_source": noise_source(self.cfg.reproducible_noise_not_private),
        }

    def noised_aggregate(self, rnd: int, global_arrays: ArrayRecord, updates: list[ArrayRecord]) -> ArrayRecord:
        """The global model plus the noised sum of the clipped updates over q N; records the round's event."""
        state = global_arrays.to_torch_state_dict()
        new = noised_mean_update(
            state,
            [u.to_torch_state_dict() for u in updates],
            self.cfg.clip_norm,
            self.noise_multiplier,
            self.q * self.cfg.lenders,
            self._randomness.normal,
        )
        self.budget.record(self.event(rnd))
        return ArrayRecord(new)

    def aggregate_train(
        self, rnd: int, arrays: ArrayRecord, trained: list[Message], secure: SecureRound | None, setup_failure: str
    ) -> RoundAggregate:
        # The run's configuration refuses secure aggregation at lender level: there is no secure round here.
        new = self.noised_aggregate(rnd, arrays, [msg.content.array_records[ARRAYS] for msg in trained])
        how = {
            "noise_event": self.budget.events[-1].to_dict(),
            "delta": self.budget.delta,
            "epsilon": self.budget.spent(),
        }
        return RoundAggregate(new, [self.lender_of_node[m.metadata.src_node_id] for m in trained], how)

    def epsilon_spent(self, record: RunRecord) -> float:
        return self.budget.spent()

    def account_ahead(self, record: RunRecord) -> None:
        """Nothing to start: the federation's one epsilon is cheap."""
        return None

    def privacy_summary(self, record: RunRecord, view: RunView) -> dict:
        """For the federation: final epsilon under both of Opacus' accountants, and each lender's epsilon against
        a reader of the ledger, who knows the rounds it was sampled in."""
        cfg, events, delta = self.cfg, self.budget.events, self.budget.delta
        both = epsilons(events, delta) if events else {"rdp": 0.0, "prv": 0.0}
        sampled = {lender: sum(lender in a.roster for a in view.complete_rounds()) for lender in view.lenders()}
        known = {
            str(lender): known_sampling_epsilon(self.noise_multiplier, k, delta, cfg.accountant)
            for lender, k in sampled.items()
        }
        federation = {
            "budget": cfg.epsilon,
            "delta": delta,
            "epsilon": both[cfg.accountant],
            "epsilon_rdp": both["rdp"],
            "epsilon_prv": both["prv"],
            "rounds_released": len(events),
            "steps": len(events),
            "noise_multiplier": self.budget.sigma,
            "sample_rate": self.q,
            "clip_norm": cfg.clip_norm,
            "noise": noise_source(cfg.reproducible_noise_not_private),
            "rounds_sampled": {str(k): v for k, v in sampled.items()},
            "epsilon_known_sampling": known,
            "epsilon_known_sampling_max": max(known.values(), default=0.0),
        }
        return {
            "dp": True,
            "granularity": cfg.dp_level,
            "accountant": cfg.accountant,
            "units": {"federation": federation},
        }


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
