import math

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.app import STATE, train as client_train
from federation.config import RunConfig
from federation.data import load_lender
from federation.messages import ARRAYS, CONFIG, METRICS, run_config_record
from federation.model import build_model
from federation.privacy.accountant import calibrate_noise, default_delta, epsilon, sample_rate, steps_per_epoch
from federation.privacy.budget import PrivacyBudget
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
@given(target=st.sampled_from([0.5, 1.0, 3.0, 8.0]), n=st.integers(200, 50_000),
       batch=st.sampled_from([32, 64, 256]), total_steps_rounds=st.integers(1, 20))
def test_calibration_lands_within_2_percent_below_target(target, n, batch, total_steps_rounds):
    q = sample_rate(n, batch)
    steps = total_steps_rounds * steps_per_epoch(n, batch)
    delta = default_delta(n)
    sigma = calibrate_noise(target, delta, q, steps)
    reached = epsilon([PrivacyEvent(0, 1, sigma, q, steps, 1.0)], delta)
    assert 0.98 * target <= reached <= target


def test_default_delta_is_below_one_over_n():
    for n in (10, 1000, 10**6):
        assert default_delta(n) <= 1 / n ** 1.1 + 1e-18
        assert default_delta(n) < 1 / n


def _train_message(cfg, rnd, model):
    config = run_config_record(cfg)
    config["server-round"] = rnd
    msg = Message(RecordDict({ARRAYS: ArrayRecord(model.state_dict()), CONFIG: ConfigRecord(dict(config))}),
                  dst_node_id=7, message_type="train")
    msg.metadata.__dict__["_message_id"] = f"m{rnd}"
    return msg


def test_lender_declines_a_round_that_would_exceed_its_budget(tmp_path):
    from flwr.supercore.task_identity import TaskIdentity
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    cfg = RunConfig(records=2000, lenders=2, rounds=2, epsilon=1.0, batch_size=64, output_dir=str(tmp_path / "run"))
    data = load_lender(cfg, 1)
    model = build_model(cfg.model, len(data.features))
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 1}, state=RecordDict(), run_config={})
    first = client_train(_train_message(cfg, 1, model), context)
    m1 = first.content[METRICS]
    assert m1["declined"] == 0 and 0 < m1["epsilon"] < 1.0
    # Pretend an earlier release already spent most of the budget: the next round must be refused
    # before any training, and the reply carries no model.
    state = PrivacyBudget.from_json(context.state[STATE]["budget"])
    state.events.append(PrivacyEvent(**{**state.events[0].to_dict(), "round": 0, "steps": state.events[0].steps * 10}))
    context.state[STATE] = ConfigRecord({"budget": state.to_json()})
    events = state.events
    before = epsilon(events, m1["delta"])
    second = client_train(_train_message(cfg, 2, model), context)
    m2 = second.content[METRICS]
    assert m2["declined"] == 1
    assert ARRAYS not in second.content
    assert m2["epsilon"] == pytest.approx(before)
    assert len(PrivacyBudget.from_json(context.state[STATE]["budget"]).events) == len(events)  # nothing new released
