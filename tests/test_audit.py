"""Empirical audit: the one-run bound's statistics, and sanity on small federations."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcredit.canary_audit import audit
from fedcredit.cli import app
from federation.config import RunConfig
from federation.data import load_lender
from federation.privacy.one_run_audit import epsilon_lower_bound, guess_counts, make_canaries, p_value


def test_p_value_matches_the_papers_worked_example():
    # Steinke et al. (2023): 75 of 100 correct, m = r = 100, eps = log 3, delta = 0 gives p ~ 0.553
    assert p_value(100, 100, 75, math.log(3), 0.0) == pytest.approx(0.553, abs=0.01)


def test_all_correct_guesses_give_the_randomized_response_bound():
    # delta = 0, v = r: p = q^r, so the bound is log(q / (1 - q)) with q = 0.05^(1/r)
    for r in (20, 100, 1000):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(math.log(q / (1 - q)), rel=1e-4)


def test_chance_level_guessing_gives_no_bound_and_delta_weakens_it():
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 100, 90, 1e-3) < epsilon_lower_bound(1000, 100, 90, 0.0)


def test_bound_is_valid_under_a_randomized_response_null():
    """Simulate eps-DP randomized response guessing: the 95% bound exceeds eps in at most ~5% of trials."""
    rng = np.random.default_rng(0)
    eps, r, trials = 1.0, 100, 300
    q = 1 / (1 + math.exp(-eps))
    above = sum(epsilon_lower_bound(r, r, int(rng.binomial(r, q)), 0.0) > eps for _ in range(trials))
    assert above / trials <= 0.08


def test_guess_counts_uses_fixed_numbers_of_guesses():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([True, True, False, False, True, False])
    assert guess_counts(scores, included, 2, 2) == (4, 3)  # top two in (both right), bottom two out (one right)
    with pytest.raises(ValueError):
        guess_counts(scores, included, 4, 3)


def test_canaries_are_out_of_distribution_and_drawn_from_the_csprng():
    a, b = make_canaries(10, 200, seed=3), make_canaries(10, 200, seed=3)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.included, b.included)  # the statistics' own tests only
    assert np.abs(a.x).min() == 3.0  # encoded records lie in [-1, 1]
    assert 60 < a.included.sum() < 140 and set(np.unique(a.y)) == {0.0, 1.0}
    # an audit's draw: which canaries go in cannot be recomputed from any seed
    c, d = make_canaries(10, 200), make_canaries(10, 200)
    assert not np.array_equal(c.included, d.included)


def test_only_the_audited_lender_receives_the_inserted_canaries_and_its_counts_are_its_own(tmp_path):
    from clients.app import signed_manifest
    from clients.session import Session
    from tests.lender_kit import make_lender, message

    cfg = RunConfig(records=2000, lenders=2)
    plain = load_lender(cfg, 1)
    drawn = make_canaries(len(plain.features), 50)
    path = tmp_path / "canaries.npz"
    np.savez(path, x=drawn.inserted[0], y=drawn.inserted[1])
    context, _ = make_lender(tmp_path / "audited", cfg, 1, audit_canaries=str(path))
    session = Session(message(cfg, 0, kind="query.manifest"), context)
    assert len(session.data.y_train) == len(plain.y_train) + int(drawn.included.sum())
    manifest = signed_manifest(session)
    assert manifest["train_records"] == len(plain.y_train)  # the inserted count is not published
    assert manifest["policy"]["audit_canaries"] is True
    other, _ = make_lender(tmp_path / "other", cfg, 0)
    assert len(Session(message(cfg, 0, kind="query.manifest"), other).data.y_train) == len(load_lender(cfg, 0).y_train)


def test_the_default_audit_can_refute_the_claim_it_audits():
    from federation.privacy.one_run_audit import audit_size, largest_refutable

    for claim in (0.5, 1.0, 3.0, 4.0):
        canaries, guesses = audit_size(claim, 1e-5)
        assert largest_refutable(canaries, guesses, 1e-5) >= claim
    # and the old default (100 canaries, 20 guesses) could never refute a claim of 1.82 or more
    assert largest_refutable(100, 20, 1e-5) < 1.83


AUDIT = RunConfig(records=2000, lenders=2, rounds=5, local_epochs=5, model="mlp", hidden=64, engine="inprocess")


def test_non_private_run_is_guessed_far_better_than_chance(tmp_path):
    # Which canaries went in is drawn from the auditor's CSPRNG, so this audit is random: at 100 canaries and 20
    # guesses a non-private run gave 13-18 correct guesses (chance: 10) and a bound above zero in 8 of 10 audits
    # (measured on this machine), so "bound > 0" alone would fail one run in five. What must hold every time: the
    # guesses are far better than chance, the membership AUC is well above 0.5, and the bound is never negative.
    result = audit(AUDIT.replace(dp=False, output_dir=str(tmp_path / "nodp")), canaries=100, guesses=20)
    assert result["largest_refutable"] > 1.6  # 20 guesses: about log(20 / 3)
    assert result["correct"] > 10  # P(at most 10 of 20) is about 0.3% at the measured accuracy of about 0.8
    assert result["epsilon_lower_bound"] >= 0
    assert math.isinf(result["epsilon_claimed"])
    assert result["mia_auc_canaries"] > 0.55  # measured 0.64-0.85
    saved = json.loads((tmp_path / "nodp" / "audit.json").read_text())
    assert saved["correct"] == result["correct"] and saved["epsilon_claimed"] is None


@pytest.mark.parametrize("epsilon", [0.5, 4.0])
def test_dp_run_never_shows_a_bound_above_its_claim(tmp_path, epsilon):
    result = audit(AUDIT.replace(dp=True, epsilon=epsilon, output_dir=str(tmp_path / "dp")), canaries=100, guesses=20)
    assert result["epsilon_claimed"] <= epsilon
    assert result["epsilon_lower_bound"] <= result["epsilon_claimed"]


CHEAT = RunConfig(
    records=1000,
    lenders=2,
    rounds=10,
    local_epochs=5,
    model="mlp",
    hidden=128,
    batch_size=32,
    clip_norm=5.0,
    epsilon=0.25,
    engine="inprocess",
)


def test_a_run_whose_noise_is_far_below_its_claim_is_caught(tmp_path, monkeypatch):
    """The audit can fail: the lender records its calibrated sigma but adds a thousandth of that noise (the test
    seam clients.dp_round.applied_noise_multiplier), and the audit's lower bound exceeds the claim.

    80 guesses among 400 canaries: the noiseless model guesses 63-68 right (measured over four runs; the bound is
    0.59-0.89 against the claim of 0.25, and about 57 right refute it). With 40 guesses among 200, 30 of 40
    gave 0.285 and 29 would have fallen below the claim: the test failed about one run in nine."""
    import clients.dp_round as dp_round

    honest = audit(CHEAT.replace(output_dir=str(tmp_path / "honest")), canaries=400, guesses=80)
    assert honest["epsilon_lower_bound"] <= honest["epsilon_claimed"] <= 0.25
    monkeypatch.setattr(dp_round, "applied_noise_multiplier", lambda recorded: recorded / 1000)
    cheat = audit(CHEAT.replace(output_dir=str(tmp_path / "cheat")), canaries=400, guesses=80)
    assert cheat["epsilon_claimed"] == pytest.approx(honest["epsilon_claimed"])  # the same recorded claim
    assert cheat["epsilon_lower_bound"] > cheat["epsilon_claimed"], cheat


def test_audit_command_prints_bound_next_to_claim(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "audit",
            "--set",
            "records=2000",
            "--lenders",
            "2",
            "--rounds",
            "2",
            "--epsilon",
            "2",
            "--output-dir",
            str(tmp_path / "cli"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "epsilon lower bound" in result.output and "epsilon claimed" in result.output
    assert "largest claim this audit could refute" in result.output


def test_audit_rejects_impossible_guess_counts(tmp_path):
    result = CliRunner().invoke(
        app, ["audit", "--canaries", "10", "--guesses", "40", "--output-dir", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "guesses must be between" in result.output
