"""The privacy of the boosting: one Gaussian release per lender per round, and the noise for a target epsilon.

A round releases each lender's [T, L, 2] leaf sums once, with L2 sensitivity sqrt(T) (federation/gbdt/leaf_sums.py)
and Gaussian noise of standard deviation z * sqrt(T), over all of its records (no subsampling). As a privacy event
that is a Gaussian mechanism of noise multiplier z (relative to the sensitivity, recorded as `clip_norm`), rate
1 and one step: the project's accountants (federation/privacy/accountant.py, dpaccounting.py) read it as a
Poisson-subsampled Gaussian with q = 1, which is the plain Gaussian mechanism; composing R rounds is R such events
(tests/test_gbdt_core.py checks the epsilon against dp_accounting's GaussianDpEvent composed R times, RDP and PLD).
The tree structures and the model the lenders compute their gradients on are public and data-independent or
post-processing of earlier releases, so adaptive composition of the rounds is all there is to account.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from federation.gbdt.leaf_sums import l2_sensitivity
from federation.gbdt.split_candidates import count_sensitivity
from federation.privacy import accountant
from federation.privacy.events import PrivacyEvent


def round_event(lender: int, round: int, noise_multiplier: float, trees_per_round: int) -> PrivacyEvent:
    """The event of one lender's release in one round (rate 1: every record is in the sums)."""
    return PrivacyEvent(
        lender=lender,
        round=round,
        noise_multiplier=float(noise_multiplier),
        sample_rate=1.0,
        steps=1,
        clip_norm=l2_sensitivity(trees_per_round),
        mechanism="gaussian",
        sampling="poisson",  # at rate 1.0: no subsampling; the accountants read it as the plain Gaussian
    )


def calibrate_noise(epsilon: float, delta: float, rounds: int, accountant_name: str = "rdp") -> float:
    """The smallest noise multiplier z (to the project's calibration tolerance, never above the target) whose
    `rounds` releases compose to at most `epsilon` at `delta`; the same calibration the planner uses for DP-SGD."""
    if rounds < 1:
        raise ValueError(f"need at least one round, got {rounds}")
    return accountant.calibrate_noise(epsilon, delta, 1.0, int(rounds), accountant_name)


def count_event(lender: int, noise_multiplier: float, n_features: int) -> PrivacyEvent:
    """The event of the optional count release (federation/gbdt/split_candidates.py), recorded as round 0."""
    return PrivacyEvent(
        lender=lender,
        round=0,
        noise_multiplier=float(noise_multiplier),
        sample_rate=1.0,
        steps=1,
        clip_norm=count_sensitivity(n_features),
        mechanism="gaussian",
        sampling="poisson",  # rate 1.0: no subsampling
    )


def split_budget(
    epsilon: float, delta: float, rounds: int, share: float, accountant_name: str = "rdp"
) -> tuple[float, float]:
    """(z of the count release, z of every round) when the count release takes `share` of the budget.

    Gaussian releases at rate 1 compose in the sum of 1 / z^2 (RDP alpha / (2 z^2) adds up; the privacy loss
    distributions of Gaussians convolve to a Gaussian), so with z1 the noise of one release worth the whole budget,
    1 / z_counts^2 + rounds / z_round^2 = 1 / z1^2: the composition spends exactly what z1 alone would."""
    if not 0 < share < 1:
        raise ValueError(f"the count release's share of the budget must be in (0, 1), got {share}")
    z1 = calibrate_noise(epsilon, delta, 1, accountant_name)
    return z1 / math.sqrt(share), z1 * math.sqrt(rounds / (1 - share))


def secure_sum_statement(bodies: list[dict], epsilon_of: Callable[[list[PrivacyEvent]], float]) -> dict | None:
    """What a lender's epsilon rests on in a gbdt run under secure aggregation, from its signed updates (each
    carries `secure_sum`: its policy's colluders c, the roster threshold t, the noise share it added), or None in
    any other run. `epsilon_own_share` is its epsilon from its own noise alone (every event at its share's noise
    multiplier): what holds if more than c others collude or fewer than t survive. `epsilon_of` is the caller's
    accountant (the coordinator's, or the verifier's own dp_accounting)."""
    terms = [b["secure_sum"] for b in bodies if b.get("secure_sum") is not None]
    if not terms:
        return None
    own = [
        replace(
            PrivacyEvent.from_dict(b["events"][0]), noise_multiplier=float(b["secure_sum"]["share_noise_multiplier"])
        )
        for b in bodies
        if b.get("secure_sum") is not None
    ]
    colluders = terms[-1]["colluders"]
    thresholds = sorted({int(t["threshold"]) for t in terms})
    return {
        "colluders": colluders,
        "thresholds": thresholds,
        "assumption": assumption_text(colluders, thresholds),
        "share_noise_multiplier": float(terms[-1]["share_noise_multiplier"]),
        "epsilon_own_share": float(epsilon_of(own)),
    }


def assumption_text(colluders: int | None, thresholds: list[int]) -> str:
    """The trust assumption a lender's epsilon rests on, in words (report and verifier print the same)."""
    if colluders is None:
        return "none: it added the full noise itself"
    least = min(thresholds) if thresholds else 0
    return (
        f"at most {colluders} other lenders collude with the coordinator and at least {least} survive each round, "
        "each honest survivor adding at least its share of the noise"
    )
