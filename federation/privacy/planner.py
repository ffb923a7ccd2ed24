"""Choose budgets before training: noise multiplier for a target epsilon, and epsilon for a sigma.

Uses the same event description and accountants as a run, so a plan made here is exactly what a run
with the same records, batch size, epochs and rounds will spend (record level; for gbdt the records and rounds), or
what the
coordinator will spend with Poisson-sampled lenders (lender level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from federation.privacy.accountant import calibrate_noise, default_delta, epsilon, sample_rate, steps_per_epoch
from federation.privacy.events import PrivacyEvent


@dataclass(frozen=True)
class Mechanism:
    """The repeated release a plan is about: rate q, steps per round, rounds."""

    sample_rate: float
    steps_per_round: int
    rounds: int
    delta: float
    granularity: str = "record"

    @property
    def total_steps(self) -> int:
        return self.steps_per_round * self.rounds

    def events(self, sigma: float) -> list[PrivacyEvent]:
        return [
            PrivacyEvent(0, r, sigma, self.sample_rate, self.steps_per_round, 1.0, granularity=self.granularity)
            for r in range(1, self.rounds + 1)
        ]


def record_level(records: int, batch_size: int, local_epochs: int, rounds: int, delta: float = 0.0) -> Mechanism:
    return Mechanism(
        sample_rate(records, batch_size),
        local_epochs * steps_per_epoch(records, batch_size),
        rounds,
        delta or default_delta(records),
    )


def boosting(records: int, rounds: int, delta: float = 0.0) -> Mechanism:
    """`--model gbdt`: each round releases a lender's leaf sums once, over all its records (rate 1, one step;
    federation/gbdt/accounting.py). The noise multiplier is relative to the sums' sensitivity."""
    return Mechanism(1.0, 1, rounds, delta or default_delta(records))


def boosting_with_counts(
    mech: Mechanism,
    share: float,
    targets: list[float],
    sigmas: list[float],
    accountants: list[str],
    calibrate_with: str,
) -> list[dict]:
    """`--gbdt-split-candidates noisy_quantiles`: round 1 of `mech` is the count release, taking `share` of each
    target's budget (federation/gbdt/accounting.py split_budget, as the lenders calibrate it), the other rounds the
    rest; a given sigma is used for every round, as a run with a fixed --noise-multiplier does. Rows as `plan`'s,
    with `count_noise_multiplier`."""
    from federation.gbdt.accounting import split_budget

    if mech.rounds < 2:
        raise ValueError("the count release takes round 1: plan 2 rounds or more")
    rows = []
    for given, target, sigma in [("target", t, None) for t in targets] + [("sigma", None, s) for s in sigmas]:
        if target is not None:
            z_counts, z = split_budget(target, mech.delta, mech.rounds - 1, share, calibrate_with)
        elif not (sigma is not None and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"noise multiplier must be positive, got {sigma}")
        else:
            z_counts = z = sigma
        events = [PrivacyEvent(0, 1, z_counts, 1.0, 1, 1.0), *mech.events(z)[1:]]
        row = {"given": given, "target_epsilon": target, "noise_multiplier": z, "count_noise_multiplier": z_counts}
        row |= {"sample_rate": 1.0, "steps": mech.total_steps, "delta": mech.delta}
        rows.append(row | {f"epsilon_{name}": epsilon(events, mech.delta, name) for name in accountants})
    return rows


def lender_level(lenders: int, lender_sample_rate: float, rounds: int, delta: float = 0.0) -> Mechanism:
    return Mechanism(lender_sample_rate, 1, rounds, delta or default_delta(lenders), "lender")


def plan(
    mech: Mechanism, targets: list[float], sigmas: list[float], accountants: list[str], calibrate_with: str = "rdp"
) -> list[dict]:
    """One row per target epsilon (sigma calibrated with `calibrate_with`) and per given sigma."""
    rows: list[dict] = []
    found: list[tuple[float, float]] = []  # (log epsilon, log sigma) of targets already calibrated
    for target in targets:
        sigma = calibrate_noise(
            target, mech.delta, mech.sample_rate, mech.total_steps, calibrate_with, guess=_interpolate(found, target)
        )
        found.append((math.log(target), math.log(sigma)))
        rows.append(_row("target", target, sigma, mech, accountants))
    for sigma in sigmas:
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"noise multiplier must be positive, got {sigma}")
        rows.append(_row("sigma", None, sigma, mech, accountants))
    return rows


def _interpolate(found: list[tuple[float, float]], target: float) -> float | None:
    """Log sigma is nearly linear in log epsilon: a secant through the two nearest known targets."""
    if len(found) < 2:
        return None
    (e1, s1), (e2, s2) = sorted(found, key=lambda p: abs(p[0] - math.log(target)))[:2]
    if e1 == e2:
        return None
    return math.exp(s1 + (s2 - s1) * (math.log(target) - e1) / (e2 - e1))


def _row(kind: str, target: float | None, sigma: float, mech: Mechanism, accountants: list[str]) -> dict:
    events = mech.events(sigma)
    row = {
        "given": kind,
        "target_epsilon": target,
        "noise_multiplier": sigma,
        "sample_rate": mech.sample_rate,
        "steps": mech.total_steps,
        "delta": mech.delta,
    }
    for name in accountants:
        row[f"epsilon_{name}"] = epsilon(events, mech.delta, name)
    return row
