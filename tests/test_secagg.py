"""Secure aggregation core: exact sums, masked vectors look uniform, dropouts up to the threshold, and the
2^64 fixed point holds the weighted vectors [n_i * clip(u_i, B), n_i] of up to 100 lenders without wrapping."""

import math

import numpy as np
import pytest
from scipy import stats

from federation.secagg import (
    MAX_WEIGHT,
    MODULUS,
    Quantizer,
    SecAggError,
    SecAggLender,
    check_threshold,
    flatten,
    unflatten,
    unmask_sum,
    weighted_quantizer,
)

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


def _exact_sum(vectors):
    """The correctly rounded sum of each coordinate (a float64 running sum rounds on its own)."""
    return np.array([math.fsum(column) for column in np.array(list(vectors)).T])


def _held_by(shares, owner, kind, holders):
    return [shares[owner][j][kind] for j in sorted(holders)]


def test_aggregate_equals_the_plain_sum_within_quantization_error():
    updates, public, quantizer, shares, masked = _setup()
    everyone = set(range(N))
    total = unmask_sum(masked, public, T, {i: _held_by(shares, i, "self_seed", everyone) for i in everyone}, {})
    plain = _exact_sum(updates.values())
    assert np.max(np.abs(quantizer.decode_sum(total) - plain)) <= quantizer.max_sum_error(N)


def test_one_lenders_masked_vector_is_indistinguishable_from_uniform():
    _, _, quantizer, _, masked = _setup(1)
    assert masked[0].dtype == np.uint64
    words = masked[0].astype(np.float64) / MODULUS
    assert stats.kstest(words, "uniform").pvalue > 1e-3
    encoded = quantizer.encode(np.random.default_rng(1).uniform(-1, 1, DIM)).view(np.int64).astype(np.float64)
    assert abs(np.corrcoef(words, encoded)[0, 1]) < 0.1


def test_a_masked_weighted_vector_looks_uniform_too():
    # the weighted vector sits in a tiny band of Z_2^64 (|values| <= 2^62 / lenders around 0): masking must hide it
    lenders = [SecAggLender(i, 3, 2) for i in range(3)]
    public = {i: lender.public_key for i, lender in enumerate(lenders)}
    update = np.random.default_rng(5).normal(0, 1, DIM)
    vector = np.append(4000 * update, 4000.0)
    encoded = weighted_quantizer(1000.0, 3).encode(vector)
    words = lenders[0].masked(encoded, public).astype(np.float64) / MODULUS
    assert stats.kstest(words, "uniform").pvalue > 1e-3
    assert stats.kstest(encoded.astype(np.float64) / MODULUS, "uniform").pvalue < 1e-10  # unmasked: far from uniform


@pytest.mark.parametrize("dropped", [{4}, {0, 3}])
def test_dropouts_up_to_the_threshold_still_give_the_survivors_sum(dropped):
    updates, public, quantizer, shares, masked = _setup(2)
    survivors = set(range(N)) - dropped
    total = unmask_sum(
        {i: masked[i] for i in survivors},
        public,
        T,
        {i: _held_by(shares, i, "self_seed", survivors) for i in survivors},
        {d: _held_by(shares, d, "private_key", survivors) for d in dropped},
    )
    plain = _exact_sum(updates[i] for i in survivors)
    assert np.max(np.abs(quantizer.decode_sum(total) - plain)) <= quantizer.max_sum_error(len(survivors))


def test_below_the_threshold_the_round_fails_clearly():
    _updates, public, _quantizer, shares, masked = _setup(3)
    survivors = {0, 1}
    with pytest.raises(SecAggError, match="only 2 lenders answered; at least 3"):
        unmask_sum(
            {i: masked[i] for i in survivors},
            public,
            T,
            {i: _held_by(shares, i, "self_seed", survivors) for i in survivors},
            {d: _held_by(shares, d, "private_key", survivors) for d in {2, 3, 4}},
        )


def test_the_coordinator_never_gets_both_masks_of_a_lender():
    _updates, public, _quantizer, shares, masked = _setup(4)
    everyone = set(range(N))
    with pytest.raises(SecAggError, match="both masks"):
        unmask_sum(
            masked,
            public,
            T,
            {i: _held_by(shares, i, "self_seed", everyone) for i in everyone},
            {0: _held_by(shares, 0, "private_key", everyone)},
        )


def test_sealed_shares_open_only_for_their_run_round_and_receiver():
    alice, bob, carol = (SecAggLender(i, 3, 2) for i in range(3))
    context = b"fedcredit secagg run round 1"
    sealed, _ = alice.sealed_shares({1: bob.channel_public_key, 2: carol.channel_public_key}, context)
    opened = bob.open_shares(0, sealed[1], alice.channel_public_key, context)
    assert opened["self_seed"][0] == opened["private_key"][0] == 2  # Bob's shares: Shamir x = his position + 1
    for who, box, ctx in (
        (bob, sealed[1], b"fedcredit secagg another run round 1"),
        (carol, sealed[1], context),
        (bob, sealed[1][:-1] + bytes([sealed[1][-1] ^ 1]), context),
    ):
        with pytest.raises(SecAggError, match="do not open"):
            who.open_shares(0, box, alice.channel_public_key, ctx)


def test_threshold_must_be_a_majority():
    check_threshold(5, 3)
    for bad in (2, 6):
        with pytest.raises(SecAggError, match="more than half"):
            check_threshold(5, bad)


# ---- the 2^64 fixed point ------------------------------------------------------------------------------------


def test_the_scale_is_a_power_of_two_that_leaves_the_sum_below_2_63():
    for bound, lenders in ((1.0, 5), (1000.0 * MAX_WEIGHT, 100), (3.7e9, 7), (0.01, 1000)):
        q = Quantizer(bound, lenders)
        assert math.frexp(q.scale)[0] == 0.5  # exactly a power of two: encoding multiplies exactly
        assert 2**61 < lenders * bound * q.scale <= 2**62  # and the largest one that fits


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_100_lenders_at_the_largest_weighted_value_do_not_wrap(sign):
    q = weighted_quantizer(1000.0, 100)
    top = np.full(8, sign * 1000.0 * MAX_WEIGHT)
    total = np.zeros(8, dtype=np.uint64)
    for _ in range(100):
        total = total + q.encode(top)
    assert np.max(np.abs(q.decode_sum(total) - 100 * top)) <= q.max_sum_error(100)


def test_the_averaged_update_of_100_lenders_is_within_1e_6_per_coordinate():
    bound, records, lenders, dim = 1000.0, 10**4, 100, 400
    rng = np.random.default_rng(7)
    q = weighted_quantizer(bound, lenders)
    directions = rng.normal(size=(lenders, dim))
    directions[:10] = np.eye(dim)[rng.integers(dim, size=10)]  # some updates all on one coordinate: the largest values
    updates = bound * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    vectors = np.column_stack([records * updates, np.full(lenders, float(records))])
    total = np.zeros(dim + 1, dtype=np.uint64)
    for vector in vectors:
        total = total + q.encode(vector)
    decoded = q.decode_sum(total)
    exact = _exact_sum(vectors)
    assert np.max(np.abs(decoded - exact)) <= q.max_sum_error(lenders)
    assert decoded[-1] == lenders * records  # the record count comes back exactly
    mean_error = np.max(np.abs(decoded[:-1] / decoded[-1] - exact[:-1] / exact[-1]))
    assert mean_error < 1e-6
    assert q.max_sum_error(lenders) / (lenders * records) < 1e-6  # the bound itself, for any such draw


def test_flatten_and_unflatten_are_inverse_in_name_order():
    arrays = {"b": np.arange(6.0).reshape(2, 3), "a": np.array([7.0, 8.0])}
    vector = flatten(arrays)
    assert vector.tolist() == [7.0, 8.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    back = unflatten(vector, arrays)
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)
