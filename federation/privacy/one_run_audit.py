"""Empirical privacy audit in one training run (Steinke, Nasr, Jagielski, NeurIPS 2023,
"Privacy Auditing with One (1) Training Run").

m canaries (out-of-distribution records with random labels) are drawn; each is put into the audited
lender's training data independently with probability 1/2. After training once, the auditor scores
every canary by its loss under the final model, guesses "member" for the k+ lowest losses and
"non-member" for the k- highest (k+ and k- fixed before training), and counts correct guesses. If the
training were (epsilon, delta)-DP, that count could exceed a threshold only with small probability;
the largest epsilon rejected at confidence 1 - beta is an empirical lower bound on the true epsilon.
A DP run's bound must stay below its claimed epsilon; a non-private run that memorizes shows one above 0.

An audit can refute only so much: with r guesses, all correct, the bound is about log(r/3), so 20 guesses can
never refute a claim above 1.82. `audit_size` picks enough canaries and guesses that the audit could refute the
claim it audits, and `largest_refutable` says how far it could go. Which canaries go in is drawn from the
operating system's CSPRNG, never from the run seed: training must not be able to know it.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
from scipy import stats

CANARY_SCALE = 3.0  # encoded features lie in [-1, 1]; canaries sit at +/-3 on every coordinate


@dataclass(frozen=True)
class Canaries:
    x: np.ndarray
    y: np.ndarray
    included: np.ndarray  # bool: which canaries the audited lender trains on

    @property
    def inserted(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[self.included], self.y[self.included]


def make_canaries(n_features: int, count: int, seed: int | None = None) -> Canaries:
    """`count` canaries; each is put in with probability 1/2. The auditor keeps the draw to itself. `seed` only for
    the statistics' own tests: an audit of a run uses the CSPRNG (None)."""
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else [seed, 0xA0D17])
    x = (CANARY_SCALE * rng.choice([-1.0, 1.0], size=(count, n_features))).astype(np.float32)
    y = rng.integers(0, 2, size=count).astype(np.float32)
    included = rng.random(count) < 0.5
    return Canaries(x, y, included)


# Audit sizes tried in order: (canaries, guesses); guesses are split evenly between "member" and "non-member".
AUDIT_SIZES = ((100, 20), (200, 100), (500, 250), (1000, 500), (2000, 1000), (4000, 2000))
REFUTE_MARGIN = 1.1  # the audit must be able to refute at least 10% more than the claim


def largest_refutable(canaries: int, guesses: int, delta: float, confidence: float = 0.95) -> float:
    """The largest claim this audit could ever refute: its bound when every guess is right."""
    return epsilon_lower_bound(canaries, guesses, guesses, delta, confidence)


def audit_size(claim: float, delta: float, confidence: float = 0.95) -> tuple[int, int]:
    """The smallest audit (canaries, guesses) that could refute `claim`, or the largest one there is."""
    for canaries, guesses in AUDIT_SIZES:
        if largest_refutable(canaries, guesses, delta, confidence) >= REFUTE_MARGIN * claim:
            return canaries, guesses
    return AUDIT_SIZES[-1]


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Probability of at least v correct guesses out of r under an (eps, delta)-DP null
    (Steinke et al. 2023, Theorem 3.1 and their Algorithm for the delta > 0 case)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-eps))  # accuracy of eps-DP randomized response
    beta = stats.binom.sf(v - 1, r, q)  # P[Binomial(r, q) >= v]
    alpha = 0.0
    if v > 0 and delta > 0:
        # cumulative[i-1] = P[v > Binomial(r, q) >= v - i], i = 1..v (the paper's loop, vectorized)
        cumulative = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
        alpha = float(np.max(cumulative / np.arange(1, v + 1)))
    return min(1.0, float(beta) + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """Largest epsilon that v correct guesses out of r reject at the given confidence (0 if none)."""
    p = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < p:
        low, high = high, high * 2
        if high > 1e3:
            return math.inf
    for _ in range(40):
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < p:
            low = mid
        else:
            high = mid
    return low


def guess_counts(scores: np.ndarray, included: np.ndarray, k_positive: int, k_negative: int) -> tuple[int, int]:
    """Guess member for the k+ highest scores, non-member for the k- lowest. Returns (guesses, correct)."""
    if k_positive + k_negative > len(scores):
        raise ValueError(f"{k_positive + k_negative} guesses for {len(scores)} canaries")
    order = np.argsort(-scores, kind="stable")
    positive, negative = order[:k_positive], order[len(order) - k_negative :] if k_negative else order[:0]
    correct = int(included[positive].sum()) + int((~included[negative]).sum())
    return k_positive + k_negative, correct
