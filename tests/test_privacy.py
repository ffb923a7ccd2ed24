import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.app import train as client_train
from federation.config import RunConfig
from federation.messages import ARRAYS, METRICS
from federation.privacy.accountant import calibrate_noise, default_delta, epsilon, sample_rate, steps_per_epoch
from federation.privacy.events import PrivacyEvent


def _events(rounds, sigma=1.1, q=0.01, steps=50):
    return [PrivacyEvent(0, r, sigma, q, steps, 1.0) for r in range(1, rounds + 1)]


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_multi_round_epsilon_equals_one_accountant_over_all_steps(accountant):
    rounds = 20
    per_round = epsilon(_events(rounds), 1e-5, accountant)
    one_shot = epsilon([PrivacyEvent(0, 0, 1.1, 0.01, 50 * rounds, 1.0)], 1e-5, accountant)
    assert per_round == pytest.approx(one_shot, abs=1e-6)
    # and far above what a per-round reset would report (the known bug in peers)
    assert per_round > 1.5 * epsilon(_events(1), 1e-5, accountant)


def test_no_release_no_epsilon():
    assert epsilon([], 1e-5) == 0.0
    assert epsilon([PrivacyEvent(0, 1, 1.0, 0.1, 0, 1.0)], 1e-5) == 0.0


@settings(max_examples=15, deadline=None)
@given(
    target=st.sampled_from([0.5, 1.0, 3.0, 8.0]),
    n=st.integers(200, 50_000),
    batch=st.sampled_from([32, 64, 256]),
    total_steps_rounds=st.integers(1, 20),
)
def test_calibration_lands_within_2_percent_below_target(target, n, batch, total_steps_rounds):
    q = sample_rate(n, batch)
    steps = total_steps_rounds * steps_per_epoch(n, batch)
    delta = default_delta(n)
    sigma = calibrate_noise(target, delta, q, steps)
    reached = epsilon([PrivacyEvent(0, 1, sigma, q, steps, 1.0)], delta)
    assert 0.98 * target <= reached <= target


def test_default_delta_is_below_one_over_n():
    for n in (10, 1000, 10**6):
        assert default_delta(n) <= 1 / n**1.1 + 1e-18
        assert default_delta(n) < 1 / n


def test_lender_declines_a_round_that_would_exceed_its_budget(tmp_path):
    import json

    from tests.lender_kit import initial_model, make_lender, message, spent

    cfg = RunConfig(records=2000, lenders=2, rounds=2, epsilon=1.0, batch_size=64, output_dir=str(tmp_path / "run"))
    context, home = make_lender(tmp_path / "lender", cfg, 1)
    model = initial_model(cfg, 1)
    first = client_train(message(cfg, 1, model=model), context)
    body = json.loads(first.content["attestation"]["body"])
    assert first.content[METRICS]["declined"] == 0 and 0 < body["epsilon"] < 1.0 and body["release"] == 1
    # Pretend an earlier release of this run already spent most of the budget: the next round must be refused
    # before any training, and the reply carries no model.
    path = home.folder / "state" / "spent.json"
    state = json.loads(path.read_text())
    account = next(iter(state["runs"].values()))
    account["events"].append({**account["events"][0], "round": 0, "steps": account["events"][0]["steps"] * 10})
    path.write_text(json.dumps(state))
    events = [PrivacyEvent.from_dict(e) for e in account["events"]]
    before = epsilon(events, body["delta"])
    second = client_train(message(cfg, 2, model=model), context)
    refusal = json.loads(second.content["attestation"]["body"])
    assert second.content[METRICS]["declined"] == 1 and ARRAYS not in second.content
    assert refusal["type"] == "lender_refusal" and refusal["limit"] == "budget"
    assert refusal["epsilon_spent"] == pytest.approx(before)
    assert len(spent(home, cfg)["events"]) == len(events) and spent(home, cfg)["releases"] == 1  # nothing new released
