"""benchmarks/gbdt_secure_tuning.py: the noise it scores with is the bench's secure cells', and its table says what
it chose and which settings tie with it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from benchmarks import gbdt_secure_tuning as tuning
from benchmarks.bench import Cell, config_for
from benchmarks.constants import headline_split
from federation.gbdt.leaf_sums import secure_noise_share
from federation.secagg import default_threshold
from federation.tree_model import gbdt_params


def test_the_sum_carries_the_noise_of_the_rosters_threshold():
    # each of k lenders adds z / sqrt(t) with no colluder (the formula the lenders use), t the roster's threshold the
    # coordinator signs (federation/secagg.py default_threshold; tests/test_secagg_trust.py ties the two)
    for k in (3, 5, 10):
        share = secure_noise_share(1.0, default_threshold(k), 0, k)
        assert math.isclose(tuning.secure_sum_factor(k), math.sqrt(k) * share)
    assert math.isclose(tuning.secure_sum_factor(10), math.sqrt(10 / 6))


def test_the_setting_and_lenders_are_the_benchs_taiwan_gbdt_cell():
    cell = config_for(Cell("taiwan_default", *headline_split("taiwan_default"), "gbdt", 3.0, 0))
    assert gbdt_params(cell) == tuning.HEADLINE and cell.lenders == tuning.LENDERS
    assert tuning.HEADLINE.split_candidates == "noisy_quantiles" and tuning.HEADLINE.rounds == cell.rounds - 1


def test_scoring_passes_the_secure_cells_noise_factor(monkeypatch):
    seen = {}

    def fake(data, delta, params, epsilon, secure, seed, noise_factor=1.0):
        seen.update(secure=secure, noise_factor=noise_factor)
        return 0.5

    monkeypatch.setattr(tuning, "gbdt_auc", fake)
    tuning.secure_auc(_data(0), 1e-5, tuning.HEADLINE, 3.0, 0)  # 3 lenders: t = 2
    assert seen == {"secure": True, "noise_factor": math.sqrt(3 / 2)}


def _data(seed: int):
    rng = np.random.default_rng(seed)
    lenders = []
    for _ in range(3):
        x = rng.uniform(-1, 1, size=(400, 4))
        y = (x[:, 0] + 0.3 * rng.standard_normal(400) > 0).astype(np.int64)
        lenders.append((x, y))
    ex = rng.uniform(-1, 1, size=(400, 4))
    return lenders, ex, (ex[:, 0] > 0).astype(np.int64)


def test_a_setting_is_scored_with_noise_and_more_noise_scores_lower():
    data = _data(0)
    params = dataclasses.replace(tuning.HEADLINE, rounds=20, n_bins=8, depth=2, trees_per_round=2)
    at_100 = tuning.secure_auc(data, 1e-5, params, 100.0, 0)
    at_02 = tuning.secure_auc(data, 1e-5, params, 0.2, 0)
    assert 0.95 < at_100 <= 1.0
    assert at_02 < at_100 - 0.1  # epsilon 0.2 over 21 releases: the sums are mostly noise


def test_the_table_marks_the_best_mean_and_names_its_ties(tmp_path):
    base = tuning.HEADLINE
    rows = [
        (dataclasses.replace(base, depth=2), {1.0: 0.760, 3.0: 0.770}),
        (dataclasses.replace(base, depth=3), {1.0: 0.762, 3.0: 0.7715}),  # best mean 0.76675
        (dataclasses.replace(base, depth=4), {1.0: 0.7610, 3.0: 0.7720}),  # 0.7665: within 0.001, a tie
    ]
    out = tmp_path / "t.md"
    tuning.write(out, rows, 60.0)
    text = out.read_text()
    assert "| 3 | 10 | 50 (chosen) |" in text and text.count("(chosen)") == 1
    assert "depth 4, 10 x 50" in text.split("Within 0.001")[1].split("\n")[0]
    assert "depth 2, 10 x 50" not in text.split("Within 0.001")[1].split("\n")[0]
    assert "--set gbdt-depth=3 --set gbdt-trees-per-round=10 --set rounds=51" in text
