"""The DP federated GBDT core (federation/gbdt): binning, trees, leaf sums, sensitivity, noise, Newton, accounting."""

import dataclasses
import itertools
import math
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from sklearn.metrics import log_loss, roc_auc_score

from federation.gbdt.accounting import calibrate_noise, count_event, round_event, split_budget
from federation.gbdt.binning import bin_features, public_bin_edges
from federation.gbdt.boosting import GbdtParams, lender_sums, round_trees, simulate
from federation.gbdt.leaf_sums import (
    gradients,
    l2_sensitivity,
    noise_after_collusion,
    noise_share,
    noised,
)
from federation.gbdt.newton import leaf_values
from federation.gbdt.split_candidates import count_sensitivity, feature_counts, usable_splits
from federation.gbdt.structure import random_trees
from federation.gbdt.trees import Ensemble, Tree
from federation.privacy import accountant, dpaccounting
from federation.privacy.noise import ChaChaStream


def _data(rng, n, features=6, bins=16):
    X = rng.uniform(-1, 1, (n, features))
    X[:, -1] = rng.integers(0, 2, n)  # a one-hot column
    y = (X[:, 0] + 0.5 * X[:, 1] + 0.3 * rng.standard_normal(n) > 0).astype(float)
    return bin_features(X, bins), y


def _random_model(rng, n_features, bins, trees=5, depth=3):
    model = Ensemble(0.3, 0.1, n_features, bins)
    return model.with_trees(
        [t.with_values(rng.normal(0, 2, t.n_leaves)) for t in random_trees(rng, trees, depth, n_features, bins)]
    )


def test_public_bins_are_equal_width_over_minus_one_one_and_keep_one_hot_apart():
    assert np.array_equal(public_bin_edges(4), [-1.0, -0.5, 0.0, 0.5, 1.0])
    Xb = bin_features(np.array([[-1.0, 0.0], [-0.75, 1.0], [0.49, 0.0], [1.0, 1.0], [3.0, 0.0]]), 4)
    assert Xb.dtype == np.uint8
    assert Xb[:, 0].tolist() == [0, 0, 2, 3, 3]
    assert bin_features(np.array([[-0.5], [-0.49]]), 4)[:, 0].tolist() == [0, 1]
    for bins in (2, 3, 7, 256):
        zero, one = bin_features(np.array([[0.0], [1.0]]), bins)[:, 0]
        assert zero < one == bins - 1
    with pytest.raises(ValueError, match="NaN"):
        bin_features(np.array([[np.nan]]), 4)
    with pytest.raises(ValueError, match="n_bins"):
        public_bin_edges(257)


def test_without_noise_the_lenders_sums_add_up_to_the_pooled_sums():
    rng = np.random.default_rng(0)
    Xb, y = _data(rng, 900)
    model = _random_model(rng, Xb.shape[1], 16)
    trees = random_trees(rng, 7, 4, Xb.shape[1], 16)
    logit = model.predict_logit(Xb)
    cuts = [0, 100, 101, 450, 900]  # lenders of 100, 1, 349 and 450 records
    parts = [lender_sums(trees, Xb[a:b], y[a:b], logit[a:b])[0] for a, b in itertools.pairwise(cuts)]
    pooled, idx = lender_sums(trees, Xb, y, logit)
    np.testing.assert_allclose(sum(parts), pooled, rtol=1e-12, atol=1e-12)
    # and the pooled sums are the plain per-leaf sums
    g, h = gradients(y, logit)
    for t in range(len(trees)):
        for leaf in range(16):
            rows = idx[:, t] == leaf
            assert pooled[t, leaf, 0] == pytest.approx(g[rows].sum(), abs=1e-9)
            assert pooled[t, leaf, 1] == pytest.approx(h[rows].sum(), abs=1e-9)


def test_without_noise_federated_boosting_is_the_pooled_boosting():
    rng = np.random.default_rng(1)
    Xb, y = _data(rng, 600)
    params = GbdtParams(n_bins=16, depth=3, trees_per_round=4, rounds=3)
    split = simulate([(Xb[:200], y[:200]), (Xb[200:], y[200:])], params, np.random.default_rng(5), noise=False)
    pooled = simulate([(Xb, y)], params, np.random.default_rng(5), noise=False)
    np.testing.assert_allclose(split.predict_logit(Xb), pooled.predict_logit(Xb), rtol=1e-12, atol=1e-12)


def test_noise_free_boosting_beats_a_constant_predictor_on_a_separable_problem():
    rng = np.random.default_rng(2)
    Xb, y = _data(rng, 3000)
    lenders = [(Xb[i::3][:666], y[i::3][:666]) for i in range(3)]
    model = simulate(
        lenders, GbdtParams(n_bins=16, depth=3, trees_per_round=5, rounds=10), np.random.default_rng(0), noise=False
    )
    test_x, test_y = Xb[2000:], y[2000:]
    p = model.predict_proba(test_x)
    assert roc_auc_score(test_y, p) > 0.9
    assert log_loss(test_y, p) < log_loss(test_y, np.full(len(test_y), y[:2000].mean())) - 0.1


def test_empty_leaves_a_one_class_lender_an_empty_lender_and_constant_features():
    rng = np.random.default_rng(3)
    Xb, y = _data(rng, 400, bins=8)
    constant = np.full((50, Xb.shape[1]), 3, dtype=np.uint8)  # every record in one leaf of every tree
    lenders = [(Xb, y), (constant, np.zeros(50)), (Xb[:0], y[:0]), (Xb[:30], np.ones(30))]
    trees = random_trees(rng, 3, 5, Xb.shape[1], 8)  # 32 leaves: many empty
    sums, idx = lender_sums(trees, constant, np.zeros(50), np.zeros(50))
    for t in range(3):
        assert (idx[:, t] == idx[0, t]).all()
        assert np.count_nonzero(sums[t, :, 1]) == 1
        assert sums[t, idx[0, t], 0] == pytest.approx(25.0)  # g = 0.5 - 0 for 50 records at logit 0
    empty, _ = lender_sums(trees, Xb[:0], y[:0], np.zeros(0))
    assert empty.shape == (3, 32, 2) and not empty.any()
    params = GbdtParams(n_bins=8, depth=5, trees_per_round=3, rounds=2, noise_multiplier=2.0)
    for noise in (False, True):
        model = simulate(
            lenders, params, np.random.default_rng(0), noise=noise, normal=np.random.default_rng(1).standard_normal
        )
        values = np.stack([t.values for t in model.trees])
        assert np.isfinite(values).all()
        if not noise:
            first = model.trees[:3]  # the first round's trees, fitted at logit 0
            all_sums = sum(lender_sums(first, X, yy, np.zeros(len(yy)))[0] for X, yy in lenders)
            assert (all_sums[..., 1] == 0).any()
            assert (values[:3][all_sums[..., 1] == 0] == 0).all()  # a leaf nobody reached stays at 0
    # a constant feature column in real data: still trains, the column is simply never informative
    Xc = Xb.copy()
    Xc[:, 0] = 0
    assert np.isfinite(simulate([(Xc, y)], params, np.random.default_rng(0), noise=False).predict_logit(Xc)).all()


def test_sensitivity_holds_by_brute_force_on_neighbouring_datasets():
    """Remove each record in turn (any model, any structure, a coordinator's adversarial ones included): the sums
    move by at most sqrt(T) in L2, and a confidently wrong record moves them by almost exactly that."""
    rng = np.random.default_rng(4)
    worst = 0.0
    for trial in range(6):
        Xb, y = _data(rng, 60, bins=8)
        T = int(rng.integers(1, 12))
        trees = random_trees(rng, T, int(rng.integers(1, 7)), Xb.shape[1], 8)
        logit = _random_model(rng, Xb.shape[1], 8).predict_logit(Xb) * (1 + 10 * trial)  # up to huge logits
        full, _ = lender_sums(trees, Xb, y, logit)
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            neighbour, _ = lender_sums(trees, Xb[keep], y[keep], logit[keep])
            shift = np.linalg.norm(full - neighbour) / math.sqrt(T)
            assert shift <= 1.0 + 1e-12
            worst = max(worst, shift)
    assert worst > 0.99  # the bound is tight: sqrt(T (1 + 1/16)) would over-noise
    # a coordinator's crafted structure: every tree isolates a target record in its own leaf (its bins are known),
    # and the model drives its logit far from its label: the target still moves the sums by at most sqrt(T)
    Xb = np.zeros((30, 3), dtype=np.uint8)
    Xb[0] = 7
    y = np.zeros(30)
    y[0] = 1
    crafted = [Tree(np.array([0, 1, 2]), np.array([6, 6, 6]), np.zeros(4)) for _ in range(4)]
    logit = np.full(30, -40.0)
    full, idx = lender_sums(crafted, Xb, y, logit)
    assert (idx[0] != idx[1:]).all()  # isolated in every tree
    neighbour, _ = lender_sums(crafted, Xb[1:], y[1:], logit[1:])
    assert np.linalg.norm(full - neighbour) <= l2_sensitivity(4)
    assert np.linalg.norm(full - neighbour) == pytest.approx(l2_sensitivity(4), rel=1e-9)
    p = np.linspace(0, 1, 100001)
    assert (p**2 + (p * (1 - p)) ** 2).max() <= 1.0
    assert l2_sensitivity(9) == 3.0


def test_noised_adds_the_callers_normals_at_multiplier_times_sensitivity():
    sums = np.arange(24, dtype=float).reshape(3, 4, 2)
    assert np.array_equal(noised(sums, 2.0, 3.0, np.ones), sums + 6.0)
    # the lender's CSPRNG returns torch tensors: accepted as they are
    draws = noised(np.zeros((200, 100, 2)), 1.5, 2.0, ChaChaStream().secure_normal)
    assert draws.shape == (200, 100, 2)
    assert draws.std() == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ValueError):
        noised(sums, -1.0, 1.0, np.ones)


def test_secure_split_shares_add_up_to_the_full_noise_and_colluders_remove_theirs():
    rng = np.random.default_rng(6)
    k, z = 10, 4.0
    share = noise_share(z, k)
    total = sum(share * rng.standard_normal(200_000) for _ in range(k))
    assert total.std() == pytest.approx(z, rel=0.02)
    honest = sum(share * rng.standard_normal(200_000) for _ in range(k - 3))  # 3 colluders' shares subtracted
    assert honest.std() == pytest.approx(noise_after_collusion(z, k, 3), rel=0.02)
    assert noise_after_collusion(z, k, 0) == pytest.approx(z)
    with pytest.raises(ValueError):
        noise_after_collusion(z, k, k)


def test_newton_leaf_values_floor_a_negative_or_zero_noisy_hessian_and_clip():
    G = np.array([-2.0, -2.0, 5.0, 0.0, -100.0])
    H = np.array([3.0, -50.0, 0.0, -1.0, 1.0])
    v = leaf_values(G, H, reg_lambda=1.0, learning_rate=0.5, leaf_clip=1.5)
    assert v.tolist() == pytest.approx([0.5 * 0.5, 0.5 * 1.5, 0.5 * -1.5, 0.0, 0.5 * 1.5])
    assert np.isfinite(leaf_values(np.array([1e300]), np.array([-1e300]), 1e-9, 1.0, 2.0)).all()
    with pytest.raises(ValueError):
        leaf_values(G, H, reg_lambda=0.0, learning_rate=0.1, leaf_clip=1.0)


@pytest.mark.parametrize("z,rounds", [(3.0, 1), (8.0, 20), (25.0, 100)])
def test_epsilon_of_r_releases_matches_dp_accounting_gaussian_composed_r_times(z, rounds):
    delta = 1e-5
    events = [round_event(0, r, z, trees_per_round=10) for r in range(1, rounds + 1)]
    assert events[0].clip_norm == pytest.approx(math.sqrt(10)) and events[0].sample_rate == 1.0
    composed = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds)
    rdp = rdp_privacy_accountant.RdpAccountant(list(dpaccounting.RDP_ORDERS)).compose(composed)
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4).compose(composed)
    assert accountant.epsilon(events, delta, "rdp") == pytest.approx(rdp.get_epsilon(delta), rel=1e-3)
    assert dpaccounting.epsilon(events, delta, "rdp") == pytest.approx(rdp.get_epsilon(delta), rel=1e-3)
    assert dpaccounting.epsilon(events, delta, "pld") == pytest.approx(pld.get_epsilon(delta), rel=1e-2)
    assert accountant.epsilon(events, delta, "prv") == pytest.approx(pld.get_epsilon(delta), rel=2e-2)


def test_calibrated_noise_spends_just_under_the_target():
    delta = 2e-4
    for eps, rounds in ((1.0, 10), (3.0, 40)):
        z = calibrate_noise(eps, delta, rounds)
        events = [round_event(0, r, z, 5) for r in range(1, rounds + 1)]
        spent = accountant.epsilon(events, delta, "rdp")
        assert eps * (1 - 0.01) <= spent <= eps
        assert dpaccounting.epsilon(events, delta, "rdp") <= eps * 1.01
    assert calibrate_noise(1.0, delta, 40) > calibrate_noise(1.0, delta, 10) > calibrate_noise(3.0, delta, 10)
    with pytest.raises(ValueError):
        calibrate_noise(1.0, delta, 0)


def test_json_round_trip_is_exact_and_a_malformed_model_is_refused():
    rng = np.random.default_rng(7)
    Xb, y = _data(rng, 300)
    model = simulate(
        [(Xb, y)], GbdtParams(n_bins=16, depth=3, trees_per_round=3, rounds=2), np.random.default_rng(0), noise=False
    )
    back = Ensemble.from_json(model.to_json())
    assert back.to_json() == model.to_json()
    assert np.array_equal(back.predict_logit(Xb), model.predict_logit(Xb))
    assert np.array_equal(back.leaf_index(Xb), model.leaf_index(Xb))
    raw = model.to_dict()
    raw["trees"][0]["thresholds"][0] = 15  # a threshold beyond the last public edge
    with pytest.raises(ValueError, match="thresholds"):
        Ensemble.from_dict(raw)
    raw = model.to_dict()
    raw["trees"][1]["values"] = raw["trees"][1]["values"][:-1]
    with pytest.raises(ValueError, match="full binary tree"):
        Ensemble.from_dict(raw)
    with pytest.raises(ValueError, match="n_bins"):
        Ensemble.from_dict({**model.to_dict(), "n_bins": 1})
    with pytest.raises(ValueError, match="lacks"):
        Ensemble.from_dict({k: v for k, v in model.to_dict().items() if k != "trees"})
    with pytest.raises(ValueError, match="not JSON"):
        Ensemble.from_json("{")
    with pytest.raises(ValueError, match="features"):
        model.predict_logit(Xb[:, :3])


def test_structures_are_drawn_from_public_information_only_and_reproducibly():
    a = round_trees(np.random.default_rng(9), GbdtParams(n_bins=8, depth=3, trees_per_round=4), 5)
    b = random_trees(np.random.default_rng(9), 4, 3, 5, 8)
    for s, t in zip(a, b, strict=True):
        assert np.array_equal(s.features, t.features) and np.array_equal(s.thresholds, t.thresholds)
        assert s.features.max() < 5 and s.thresholds.max() <= 6 and len(s.values) == 8
    tree = Tree(np.array([0, 1, 1]), np.array([3, 0, 5]), np.arange(4.0))
    Xb = np.array([[3, 0], [4, 0], [3, 1], [4, 6]], dtype=np.uint8)
    assert tree.leaf_index(Xb).tolist() == [0, 2, 1, 3]


def test_the_algorithm_core_imports_numpy_only():
    """The model and the lenders' side never need torch (only accounting.py reads the project's accountants)."""
    code = (
        "import sys; import federation.gbdt.boosting, federation.gbdt.trees, federation.gbdt.binning;"
        "print(sorted(m for m in ('torch', 'opacus', 'server', 'clients', 'flwr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_count_release_sensitivity_is_sqrt_features_by_brute_force():
    rng = np.random.default_rng(11)
    Xb, _ = _data(rng, 40, features=7, bins=8)
    full = feature_counts(Xb, 8)
    assert full.sum() == 40 * 7
    for i in range(len(Xb)):
        neighbour = feature_counts(np.delete(Xb, i, axis=0), 8)
        assert np.linalg.norm(full - neighbour) == pytest.approx(count_sensitivity(7))
    assert feature_counts(Xb[:0], 8).shape == (7, 8)


def test_usable_splits_keep_thresholds_with_enough_records_on_each_side():
    counts = np.array([[0.0, 50, 50, 0], [100, 0, 0, -3], [-5, 0, 0, 0]])  # B = 4: thresholds 0..2
    kept = usable_splits(counts, 0.1)
    assert kept.tolist() == [1]  # feature 0, threshold 1: 50 / 50; feature 1 has everything left of every threshold
    assert usable_splits(np.zeros((2, 4)), 0.1).tolist() == list(range(6))  # nothing usable: every pair
    trees = random_trees(np.random.default_rng(0), 20, 3, 3, 4, candidates=kept)
    assert all((t.features == 0).all() and (t.thresholds == 1).all() for t in trees)
    with pytest.raises(ValueError, match="candidates"):
        random_trees(np.random.default_rng(0), 1, 3, 3, 4, candidates=np.array([9]))


def test_the_count_release_and_the_rounds_compose_to_the_target_epsilon():
    delta, rounds = 2e-4, 30
    for eps in (1.0, 3.0):
        z_counts, z_round = split_budget(eps, delta, rounds, share=0.1)
        events = [count_event(0, z_counts, 49), *(round_event(0, r, z_round, 5) for r in range(1, rounds + 1))]
        assert accountant.epsilon(events, delta, "rdp") <= eps
        assert accountant.epsilon(events, delta, "rdp") == pytest.approx(eps, rel=0.01)
        assert dpaccounting.epsilon(events, delta, "pld") == pytest.approx(
            dpaccounting.epsilon([round_event(0, 1, calibrate_noise(eps, delta, 1), 5)], delta, "pld"), rel=0.01
        )
    with pytest.raises(ValueError, match="share"):
        split_budget(1.0, delta, rounds, share=1.0)


def test_without_noise_noisy_quantile_candidates_are_the_pooled_ones():
    rng = np.random.default_rng(12)
    Xb, y = _data(rng, 600, bins=32)
    params = GbdtParams(n_bins=32, depth=3, trees_per_round=3, rounds=3, split_candidates="noisy_quantiles")
    split = simulate([(Xb[:250], y[:250]), (Xb[250:], y[250:])], params, np.random.default_rng(2), noise=False)
    pooled = simulate([(Xb, y)], params, np.random.default_rng(2), noise=False)
    np.testing.assert_allclose(split.predict_logit(Xb), pooled.predict_logit(Xb), rtol=1e-12, atol=1e-12)
    usable = set(usable_splits(feature_counts(Xb, 32), params.min_fraction).tolist())
    assert all(
        int(f) * 31 + int(t) in usable
        for tree in split.trees
        for f, t in zip(tree.features, tree.thresholds, strict=True)
    )
    noisy = simulate(
        [(Xb, y)],
        dataclasses.replace(params, noise_multiplier=5.0, count_noise_multiplier=5.0),
        np.random.default_rng(2),
        noise=True,
        secure_split=True,
        normal=np.random.default_rng(3).standard_normal,
    )
    assert np.isfinite(noisy.predict_logit(Xb)).all()
    with pytest.raises(ValueError, match="split_candidates"):
        GbdtParams(split_candidates="best").validated()
