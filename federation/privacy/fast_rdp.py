"""RDP of the Poisson-subsampled Gaussian mechanism at many orders at once, in numpy.

Opacus (accountants/analysis/rdp.py) evaluates it order by order in a pure-Python series: 0.03-0.2 s a call for
its 151 default orders on this machine, and calibrating a lender's noise takes 10-30 calls, which made the
calibration most of a lender's first round (about 1.5 s alone, 3 s with three lenders on two cores). This
evaluates the same quantities (Mironov, Talwar and Zhang, "Renyi Differential Privacy of the Sampled Gaussian
Mechanism", 2019, Section 3.3; the formulas of Opacus' `_compute_log_a_for_int_alpha` and
`_compute_log_a_for_frac_alpha`, the fractional series stopped at the same term) for all orders as arrays.
tests/test_accounting.py compares it with Opacus at every default order over a grid of sampling rates and noise
multipliers (within 1e-7 relative or 1e-12 absolute: both sum thousands of floats near 1 for the tiny RDP of
orders near 1, in different orders)
and the epsilons both give; `python -m benchmarks.perf.rdp_cost` times the two side by side.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

STOP_LOG_TERM = -30.0  # Opacus stops the fractional series after the first term whose log is below this
FIRST_TERMS = 64  # terms evaluated at first for the fractional series; doubled while any order needs more


def rdp_subsampled_gaussian(q: float, sigma: float, orders) -> np.ndarray:
    """RDP at each order of one step of the Gaussian mechanism with noise multiplier `sigma`, each record
    included with probability `q` (what Opacus' compute_rdp returns for steps=1)."""
    orders = np.asarray(orders, dtype=float)
    if q == 0:
        return np.zeros_like(orders)
    if sigma == 0:
        return np.full_like(orders, np.inf)
    if q == 1.0:
        return orders / (2 * sigma**2)
    out = np.empty_like(orders)
    integer = np.array([float(a).is_integer() for a in orders])
    if integer.any():
        out[integer] = _log_a_int(q, sigma, orders[integer].astype(int)) / (orders[integer] - 1)
    if (~integer).any():
        out[~integer] = _log_a_frac(q, sigma, orders[~integer]) / (orders[~integer] - 1)
    return out


def _log_binom(alpha: np.ndarray, i: np.ndarray) -> np.ndarray:
    """log |binom(alpha, i)| for real alpha > 0 and integer i >= 0 (scipy's binom, as Opacus takes it)."""
    return np.log(np.abs(special.binom(alpha, i)))


def _log_a_int(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """log A_alpha for integer alphas: the finite sum over i = 0..alpha, for every alpha at once."""
    i = np.arange(alphas.max() + 1)[None, :]
    a = alphas[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = _log_binom(a, i) + i * math.log(q) + (a - i) * math.log(1 - q) + (i * i - i) / (2 * sigma**2)
    terms = np.where(i <= a, terms, -np.inf)
    return special.logsumexp(terms, axis=1)


def _log_a_frac(q: float, sigma: float, alphas: np.ndarray) -> np.ndarray:
    """log A_alpha for fractional alphas: both halves of the series, each term signed as binom(alpha, i), summed up
    to and including the first term whose log (the larger of the two halves') is below STOP_LOG_TERM. Near
    alpha = 1 the series runs to thousands of terms, at alpha = 10 to a few dozen: the orders still running get
    twice the terms until each has stopped."""
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    out = np.empty(len(alphas))
    todo, count = np.arange(len(alphas)), FIRST_TERMS
    while todo.size:
        a, i = alphas[todo][:, None], np.arange(count, dtype=float)[None, :]
        j = a - i
        coef = special.binom(a, i)
        with np.errstate(divide="ignore"):
            log_coef = np.log(np.abs(coef))
        common = log_coef + math.log(0.5)
        # the two halves are mirror images: (i, j) and (j, i), the erfc's argument negated
        log_s0 = _log_half_term(common, i, j, q, sigma, (i - z0) / (math.sqrt(2) * sigma))
        log_s1 = _log_half_term(common, j, i, q, sigma, (z0 - j) / (math.sqrt(2) * sigma))
        below = np.maximum(log_s0, log_s1) < STOP_LOG_TERM
        done = below.any(axis=1)
        # the first term below the threshold is still added, as in Opacus
        keep = (i <= below.argmax(axis=1)[:, None]) & (coef != 0)
        sign = np.sign(coef)
        total = np.logaddexp(_signed_log_sum(log_s0, sign, keep), _signed_log_sum(log_s1, sign, keep))
        out[todo[done]] = total[done]
        todo, count = todo[~done], count * 2
    return out


def _log_half_term(
    common: np.ndarray, k: np.ndarray, m: np.ndarray, q: float, sigma: float, erfc_arg: np.ndarray
) -> np.ndarray:
    """The log of one half's terms of Opacus' fractional series: common + k log q + m log(1 - q) +
    (k^2 - k) / (2 sigma^2) + log erfc(erfc_arg), summed in Opacus' order."""
    return common + k * math.log(q) + m * math.log(1 - q) + (k * k - k) / (2 * sigma**2) + _log_erfc(erfc_arg)


def _signed_log_sum(log_terms: np.ndarray, sign: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """log of the sum of sign * exp(log_terms) over the kept terms of each row (a positive sum)."""
    log_terms = np.where(keep, log_terms, -np.inf)
    top = log_terms.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log((sign * np.exp(log_terms - top)).sum(axis=1)) + top[:, 0]


def _log_erfc(x: np.ndarray) -> np.ndarray:
    return math.log(2) + special.log_ndtr(-x * 2**0.5)
