"""Secure aggregation wired into the Flower rounds: the coordinator gets the same model as plain FedAvg
(within the fixed-point error) while each lender's reply is uniform noise to it; dropouts up to the
threshold are absorbed, below it the round fails with a clear reason; the lender refuses to reveal both
masks of one lender or shares that were tampered with."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from scipy import stats

from federation.audit_trail import ledger as L
from federation.audit_trail.verify import verify_run
from federation.config import RunConfig
from federation.errors import ConfigError
from federation.messages import MASKED, numpy_arrays
from federation.runner import run
from federation.secagg import MODULUS, SecAggError
from federation import secagg_lender

BASE = RunConfig(records=4000, lenders=5, rounds=3, engine="inprocess", seed=2)


def _entries(run_dir):
    return [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]


def _max_difference(a, b):
    first, second = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def _pair(tmp_path, **changes):
    plain = run(BASE.replace(output_dir=str(tmp_path / "plain"), **changes), on_round=lambda s: None)
    secure = run(BASE.replace(output_dir=str(tmp_path / "secure"), secure_aggregation=True, **changes), on_round=lambda s: None)
    return plain, secure


def test_secure_run_gives_the_plain_fedavg_model_and_says_so(tmp_path):
    plain, secure = _pair(tmp_path)
    assert _max_difference(plain, secure) < 1e-4  # fixed point with max-update-norm 1000: ~1e-5 per coordinate
    verify_run(secure)
    report = json.loads((secure / "report.json").read_text())
    assert report["privacy"]["secure_aggregation"] is True
    assert any(line.startswith("Secure aggregation was on") for line in report["summary"])
    assert json.loads((plain / "report.json").read_text())["privacy"]["secure_aggregation"] is False
    updates = [e["body"] for e in _entries(secure) if e["type"] == L.LENDER_UPDATE]
    assert updates and all(list(u["shapes"]) == [MASKED] for u in updates)  # no lender sent its model in the clear
    aggregates = [e["body"] for e in _entries(secure) if e["type"] == L.AGGREGATE]
    assert all(a["secure_aggregation"] and len(a["lenders"]) == 5 for a in aggregates)


def test_what_the_coordinator_receives_from_one_lender_looks_uniform(tmp_path, monkeypatch):
    import server.secure_rounds as rounds

    seen = []
    aggregate = rounds.SecureRound.aggregate

    def spy(self, global_arrays, accepted):
        seen.append(numpy_arrays(accepted[0].content["arrays"])[MASKED])
        return aggregate(self, global_arrays, accepted)

    monkeypatch.setattr(rounds.SecureRound, "aggregate", spy)
    cfg = BASE.replace(model="mlp", hidden=64, rounds=1, secure_aggregation=True, output_dir=str(tmp_path / "mlp"))
    run(cfg, on_round=lambda s: None)
    words = seen[0].astype(np.float64) / MODULUS
    assert words.size > 1000
    assert stats.kstest(words, "uniform").pvalue > 1e-3
    # and it does not look like an encoded update, which sits near 1/(2 x lenders) of the range (bound offset)
    assert abs(np.mean(words) - 0.5) < 0.05


def test_dropouts_up_to_the_threshold_give_the_survivors_fedavg(tmp_path):
    # seed 2, fail-rate 0.3: two of the five lenders fail in every round (threshold 3 of 5)
    plain, secure = _pair(tmp_path, fail_rate=0.3)
    aggregates = [e["body"] for e in _entries(secure) if e["type"] == L.AGGREGATE]
    assert [len(a["lenders"]) for a in aggregates] == [3, 3, 3]
    assert not any(a.get("skipped") for a in aggregates)
    assert _max_difference(plain, secure) < 1e-4
    verify_run(secure)


def test_below_the_threshold_the_round_fails_with_a_clear_reason(tmp_path):
    # seed 3, fail-rate 0.3, 3 lenders: two fail in round 1 (threshold 2 of 3), one in round 2
    cfg = BASE.replace(lenders=3, seed=3, fail_rate=0.3, secure_aggregation=True, output_dir=str(tmp_path / "low"))
    out = run(cfg, on_round=lambda s: None)
    aggregates = [e["body"] for e in _entries(out) if e["type"] == L.AGGREGATE]
    assert aggregates[0]["skipped"] and aggregates[0]["lenders"] == []
    assert "only 1 lenders sent their masked update; secure aggregation needs at least 2 of 3" in aggregates[0]["reason"]
    assert not aggregates[1].get("skipped") and len(aggregates[1]["lenders"]) == 2
    assert json.loads((out / "config.json").read_text())["rounds-completed"] == 3  # the failed round still counts
    verify_run(out)


@pytest.mark.parametrize("changes, message", [
    ({"strategy": "fedmedian"}, "needs each update"),
    ({"dp_level": "lender"}, "dp-level 'lender'"),
    ({"lenders": 1}, "at least 2 lenders"),
    ({"max_update_norm": 0.0}, "max-update-norm"),
])
def test_secure_aggregation_refuses_what_it_cannot_protect(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(secure_aggregation=True, **changes).validated()


def _three_lenders_after_training():
    """Three lender contexts that went through keys, shares and train for round 1 (update zero)."""
    contexts = [Context(run_id=1, node_id=i, node_config={}, state=RecordDict(), run_config={}) for i in range(3)]
    keys = [secagg_lender.advertise(c, 1, ConfigRecord({"position": i, "participants": 3, "threshold": 2}))
            for i, c in enumerate(contexts)]
    request = ConfigRecord({"mask-keys": [k["mask-key"] for k in keys], "channel-keys": [k["channel-key"] for k in keys]})
    sealed = [secagg_lender.share(c, 1, "run", request)["sealed"] for c in contexts]
    for i, c in enumerate(contexts):
        train = ConfigRecord({"sealed": [sealed[j][i] for j in range(3)], "active": [0, 1, 2], "weight": 1 / 3})
        secagg_lender.masked_update(c, 1, train, {"w": np.zeros(4)}, 10.0)
    return contexts


def test_a_lender_never_reveals_both_masks_of_one_lender():
    contexts = _three_lenders_after_training()
    with pytest.raises(SecAggError, match="both masks"):
        secagg_lender.reveal(contexts[0], 1, "run", ConfigRecord({"survivors": [0, 1], "dropped": [1, 2]}))
    answer = secagg_lender.reveal(contexts[0], 1, "run", ConfigRecord({"survivors": [0, 1], "dropped": [2]}))
    assert len(answer["seed-shares"]) == 2 and len(answer["key-shares"]) == 1
    with pytest.raises(SecAggError, match="already answered"):  # a second question could ask for the other mask
        secagg_lender.reveal(contexts[0], 1, "run", ConfigRecord({"survivors": [0, 1, 2], "dropped": []}))


def test_a_tampered_or_misrouted_share_does_not_open():
    contexts = _three_lenders_after_training()
    state = contexts[1].state[secagg_lender.STATE]
    sealed = list(state["sealed-in"])
    sealed[2] = sealed[2][:-1] + bytes([sealed[2][-1] ^ 1])
    state["sealed-in"] = sealed
    with pytest.raises(SecAggError, match="do not open"):
        secagg_lender.reveal(contexts[1], 1, "run", ConfigRecord({"survivors": [0, 1, 2], "dropped": []}))
    with pytest.raises(SecAggError, match="do not open"):  # the right bytes under another run's name
        secagg_lender.reveal(contexts[0], 1, "another run", ConfigRecord({"survivors": [0, 1, 2], "dropped": []}))


def test_a_lender_lost_while_sharing_keys_is_left_out_and_spends_nothing(tmp_path, monkeypatch):
    share = secagg_lender.share

    def fails_for_one(context, rnd, run_id, request):
        me = context.state[secagg_lender.STATE]
        if rnd == 1 and int(me["index"]) == 4:
            raise ConnectionError("lender 4 lost its connection while sharing")
        return share(context, rnd, run_id, request)

    monkeypatch.setattr(secagg_lender, "share", fails_for_one)
    out = run(BASE.replace(secure_aggregation=True, output_dir=str(tmp_path / "lost")), on_round=lambda s: None)
    entries = _entries(out)
    rejected = [e["body"] for e in entries if e["type"] == L.UPDATE_REJECTED]
    assert [(r["round"], r["lender"]) for r in rejected] == [(1, 4)]
    assert "query.secagg_shares" in rejected[0]["reason"] and "lost its connection" in rejected[0]["reason"]
    aggregates = [e["body"] for e in entries if e["type"] == L.AGGREGATE]
    assert [len(a["lenders"]) for a in aggregates] == [4, 5, 5] and not any(a.get("skipped") for a in aggregates)
    privacy = json.loads((out / "privacy.json").read_text())["units"]
    assert privacy["4"]["rounds_released"] == 2 and privacy["0"]["rounds_released"] == 3
    verify_run(out)


def test_fedprox_with_three_lenders_a_round_matches_too(tmp_path):
    plain, secure = _pair(tmp_path, strategy="fedprox", lenders_per_round=3, rounds=2)
    assert _max_difference(plain, secure) < 1e-4
    aggregates = [e["body"] for e in _entries(secure) if e["type"] == L.AGGREGATE]
    assert [len(a["lenders"]) for a in aggregates] == [3, 3]
