"""Secure aggregation core: exact sums, masked vectors look uniform, dropouts up to the threshold."""

import numpy as np
import pytest
from scipy import stats

from federation.secagg import MODULUS, Quantizer, SecAggError, SecAggLender, check_threshold, unmask_sum

N, T, DIM = 5, 3, 2000


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    updates = {i: rng.uniform(-1, 1, DIM) for i in range(N)}
    lenders = {i: SecAggLender(i, N, T) for i in range(N)}
    public = {i: lender.public_key for i, lender in lenders.items()}
    quantizer = Quantizer(bound=1.0, lenders=N)
    shares = {i: lender.shares() for i, lender in lenders.items()}  # shares[i][j]: lender j's share of i's secrets
    masked = {i: lenders[i].masked(quantizer.encode(updates[i]), public) for i in range(N)}
    return updates, public, quantizer, shares, masked


def _held_by(shares, owner, kind, holders):
    return [shares[owner][j][kind] for j in sorted(holders)]


def test_aggregate_equals_the_plain_sum_within_quantization_error():
    updates, public, quantizer, shares, masked = _setup()
    everyone = set(range(N))
    total = unmask_sum(masked, public, T, {i: _held_by(shares, i, "self_seed", everyone) for i in everyone}, {})
    plain = sum(updates.values())
    assert np.max(np.abs(quantizer.decode_sum(total, N) - plain)) <= quantizer.max_sum_error(N) + 1e-12


def test_one_lenders_masked_vector_is_indistinguishable_from_uniform():
    _, _, quantizer, _, masked = _setup(1)
    words = masked[0].astype(np.float64) / MODULUS
    assert stats.kstest(words, "uniform").pvalue > 1e-3
    encoded = quantizer.encode(np.random.default_rng(1).uniform(-1, 1, DIM))
    assert abs(np.corrcoef(words, encoded.astype(np.float64))[0, 1]) < 0.1


@pytest.mark.parametrize("dropped", [{4}, {0, 3}])
def test_dropouts_up_to_the_threshold_still_give_the_survivors_sum(dropped):
    updates, public, quantizer, shares, masked = _setup(2)
    survivors = set(range(N)) - dropped
    total = unmask_sum({i: masked[i] for i in survivors}, public, T,
                       {i: _held_by(shares, i, "self_seed", survivors) for i in survivors},
                       {d: _held_by(shares, d, "private_key", survivors) for d in dropped})
    plain = sum(updates[i] for i in survivors)
    assert np.max(np.abs(quantizer.decode_sum(total, len(survivors)) - plain)) <= quantizer.max_sum_error(N) + 1e-12


def test_below_the_threshold_the_round_fails_clearly():
    updates, public, quantizer, shares, masked = _setup(3)
    survivors = {0, 1}
    with pytest.raises(SecAggError, match="only 2 lenders answered; at least 3"):
        unmask_sum({i: masked[i] for i in survivors}, public, T,
                   {i: _held_by(shares, i, "self_seed", survivors) for i in survivors},
                   {d: _held_by(shares, d, "private_key", survivors) for d in {2, 3, 4}})


def test_the_coordinator_never_gets_both_masks_of_a_lender():
    updates, public, quantizer, shares, masked = _setup(4)
    everyone = set(range(N))
    with pytest.raises(SecAggError, match="both masks"):
        unmask_sum(masked, public, T, {i: _held_by(shares, i, "self_seed", everyone) for i in everyone},
                   {0: _held_by(shares, 0, "private_key", everyone)})


def test_threshold_must_be_a_majority():
    check_threshold(5, 3)
    for bad in (2, 6):
        with pytest.raises(SecAggError, match="more than half"):
            check_threshold(5, bad)
