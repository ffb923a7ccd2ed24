"""Red team of `--model gbdt`: the coordinator attacks the lenders' leaf-sum releases and its own ledger.

Each test is an attack a curious, lying coordinator can mount (README threat model); it would succeed if the claim
it names were false. The lender side drives one lender's ClientApp directly (tests/lender_kit.py) with requests of
the coordinator's making; the ledger side re-signs a real run's folder with the coordinator's key (tests/forge.py).
Attacks already in tests/test_gbdt_federation.py (a lower noise multiplier, sampling claimed, a dropped round,
noise below the floor, a budget over the maximum, more trees than the sensitivity limit, the seed attack, doubled
leaf values, a forged leaf sum, one recorded threshold changed) are not repeated.
"""

import json
import math

import numpy as np
import pytest
import torch

from clients.app import train as lender_train
from fedcredit.runner import run
from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import arrays_hash, config_hash
from federation.audit_trail.gbdt_ledger import _asked, _grow
from federation.audit_trail.verify import VerificationFailed, verify_run
from federation.config import RunConfig
from federation.data import load_lender
from federation.gbdt.binning import bin_features
from federation.gbdt.leaf_sums import l2_sensitivity
from federation.gbdt.structure import random_trees
from federation.gbdt_release import LEAF_SUMS, exact_leaf_sums
from federation.messages import ARRAYS
from federation.model import model_for
from federation.privacy.accountant import epsilon
from federation.privacy.events import PrivacyEvent
from federation.tree_model import build_tree_model, round_trees
from tests.forge import Forger, copy_run, entries_of, restate_privacy
from tests.lender_kit import make_lender, message, spent
from tests.test_gbdt_federation import GBDT, _quiet  # the same small gbdt federation the gbdt tests attack


def _body(reply) -> dict:
    return json.loads(reply.content["attestation"]["body"])


def _model(cfg: RunConfig, rnd: int, structure_seed: int = 0, base_score: float = 0.0):
    """A request's model: empty but for round `rnd`'s random structures (and a base score of the coordinator's)."""
    model = model_for(cfg, len(load_lender(cfg, 0).features))
    trees = random_trees(
        np.random.default_rng(structure_seed), cfg.gbdt_trees_per_round, cfg.gbdt_depth, model.n_features, cfg.gbdt_bins
    )
    rows = round_trees(cfg, rnd)
    model.features[rows] = torch.as_tensor(np.stack([t.features for t in trees]))
    model.thresholds[rows] = torch.as_tensor(np.stack([t.thresholds for t in trees]))
    model.base_score[0] = base_score
    return model


def _all_events(home) -> list[PrivacyEvent]:
    path = home.folder / "state" / "spent.json"
    runs = json.loads(path.read_text())["runs"]
    return [PrivacyEvent.from_dict(e) for account in runs.values() for e in account["events"]]


# ---- the lender's releases against the coordinator -------------------------------------------------------------


def test_fresh_noise_draws_of_the_same_sums_are_each_paid_for_until_the_lifetime_maximum(tmp_path):
    """The coordinator wants many noisy draws of (nearly) the same leaf sums to average the noise away: it asks
    round 1 again and again with other structures, replays round 1 as round 2, and re-asks with a parameter a gbdt
    release does not even use (batch size, learning rate: a new run to the lender). Each answer is a new release,
    so the lender's own accounting, over all its runs, stops it at its maximum; an identical request gets the
    identical bytes (no fresh draw)."""
    context, home = make_lender(tmp_path / "lender", GBDT, 0)  # max_epsilon = GBDT's budget, 3
    asks = [(GBDT, 1, 0), (GBDT, 1, 1), (GBDT, 2, 0), (GBDT.replace(batch_size=33), 1, 0)]
    asks += [(GBDT.replace(learning_rate=0.5), 1, 0), (GBDT.replace(batch_size=34), 1, 2), (GBDT, 3, 3)]
    answered, refused = [], []
    for cfg, rnd, seed in asks:
        reply = lender_train(message(cfg, rnd, model=_model(cfg, rnd, seed)), context)
        body = _body(reply)
        (answered if body["type"] == "lender_update" else refused).append(body)
    assert len(answered) >= 2 and refused  # the premise: some draws were had, and the lender stopped
    assert {r["limit"] for r in refused} <= {"budget", "max_epsilon"}
    events = _all_events(home)
    # every distinct draw the coordinator got is an event of the lender's own (the learning rate, which a gbdt
    # release does not use, is not part of the request: asking with another one is the first request again, and
    # gets the first reply again)
    assert len(events) == len({(a["run"], a["release"]) for a in answered}) == 3
    assert epsilon(events, answered[0]["delta"]) <= 3.0 + 1e-9  # all runs together within the lender's maximum
    # the same request again: the same bytes, no new release
    before = spent(home, GBDT)["releases"]
    first = lender_train(message(GBDT, 1, model=_model(GBDT, 1, 0)), context)
    again = lender_train(message(GBDT, 1, model=_model(GBDT, 1, 0)), context)
    assert np.array_equal(first.content[ARRAYS][LEAF_SUMS].numpy(), again.content[ARRAYS][LEAF_SUMS].numpy())
    assert spent(home, GBDT)["releases"] == before


def _isolating_tree(binned: np.ndarray, depth: int) -> tuple[int, np.ndarray, np.ndarray]:
    """A structure that isolates one record in a leaf (greedily: at each level the split that leaves the fewest
    other records on its side), for the record it isolates best: (record, features, thresholds) in heap order."""
    best = None
    for target in range(0, len(binned), max(1, len(binned) // 40)):
        features = np.zeros(2**depth - 1, dtype=np.int64)
        thresholds = np.zeros(2**depth - 1, dtype=np.int64)
        together, node = np.ones(len(binned), dtype=bool), 0
        for _ in range(depth):
            choices = []
            for f in range(binned.shape[1]):
                b = int(binned[target, f])
                if b > 0:  # go right with bins above b - 1
                    choices.append(((together & (binned[:, f] > b - 1)).sum(), f, b - 1, True))
                if b < 15:  # go left with bins at most b
                    choices.append(((together & (binned[:, f] <= b)).sum(), f, b, False))
            _, f, t, right = min(choices)
            features[node], thresholds[node] = f, t
            together &= (binned[:, f] > t) if right else (binned[:, f] <= t)
            node = 2 * node + 1 + right
        if best is None or together.sum() < best[0]:
            best = (together.sum(), target, features, thresholds)
    assert best is not None and best[0] == 1, best and best[0]  # the premise: a leaf only this record reaches
    return best[1], best[2], best[3]


@pytest.mark.parametrize("base_score", [1e6, -1e6, 0.0], ids=["logit +1e6", "logit -1e6", "logit 0"])
def test_a_leaf_isolating_one_record_under_an_extreme_ensemble_stays_within_the_sensitivity(tmp_path, base_score):
    """The coordinator sends trees whose leaf holds one record only, with a current ensemble that drives g to its
    extreme (|g| = 1 at logit +-1e6, the largest magnitude the lender accepts). Removing that record changes the
    exact sums by at most the claimed sensitivity sqrt(k) (exactly sqrt(k) at the extreme: the bound is tight),
    and the noise the lender adds is the event's noise multiplier times that sensitivity."""
    cfg = GBDT.replace(gbdt_depth=8)
    context, home = make_lender(tmp_path / "lender", cfg, 0)
    data = load_lender(cfg, 0)
    binned = bin_features(data.x_train, cfg.gbdt_bins)
    target, features, thresholds = _isolating_tree(binned, cfg.gbdt_depth)
    model = _model(cfg, 1, base_score=base_score)
    model.features[0], model.thresholds[0] = torch.as_tensor(features), torch.as_tensor(thresholds)
    model.features[1], model.thresholds[1] = torch.as_tensor(features), torch.as_tensor(thresholds)  # both trees
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    n_features = len(data.features)
    exact = exact_leaf_sums(cfg, arrays, n_features, 1, data.x_train, data.y_train)
    keep = np.arange(len(data.y_train)) != target
    without = exact_leaf_sums(cfg, arrays, n_features, 1, data.x_train[keep], data.y_train[keep])
    change = float(np.linalg.norm(exact - without))
    k = cfg.gbdt_trees_per_round
    assert change <= l2_sensitivity(k) * (1 + 1e-12)  # (0 where the logit makes its g and h 0)
    if abs(base_score) == 1e6 and (data.y_train[target] == 1) == (base_score < 0):
        assert change == pytest.approx(math.sqrt(k), rel=1e-12)  # |g| = 1, h = 0: the bound is reached
    reply = lender_train(message(cfg, 1, model=model), context)
    body = _body(reply)
    assert body["type"] == "lender_update", body
    [event] = body["events"]
    noise = reply.content[ARRAYS][LEAF_SUMS].numpy() - exact
    assert event["clip_norm"] == l2_sensitivity(k) and event["sample_rate"] == 1.0
    assert np.std(noise) == pytest.approx(event["noise_multiplier"] * l2_sensitivity(k), rel=0.15)
    assert spent(home, cfg)["releases"] == 1


@pytest.mark.parametrize("rnd", [0, 4, -1], ids=["round 0", "round past the last", "negative round"])
def test_a_round_outside_the_run_is_refused_before_any_release(tmp_path, rnd):
    """A gbdt round's release is the sums of that round's rows of trees. Round 0 or a round after the last was
    charged as a release and then crashed the round (no rows: the budget spent on nothing); a negative round was
    released (Python's slices read it as rows from the end: another round's trees, under a round number no ledger
    round has). Each now gets a signed refusal, and nothing is released or charged."""
    context, home = make_lender(tmp_path / "lender", GBDT, 0)
    reply = lender_train(message(GBDT, rnd, model=_model(GBDT, 2)), context)
    body = _body(reply)
    assert body["type"] == "lender_refusal" and body["limit"] == "round", body
    assert ARRAYS not in reply.content and spent(home, GBDT)["releases"] == 0


@pytest.mark.parametrize("grown", [7, -1], ids=["more trees grown than the model holds", "negative count"])
def test_a_model_with_an_impossible_count_of_grown_trees_is_refused_before_any_release(tmp_path, grown):
    """The lender computes its gradients at the logit of the trees the model says are grown: a count the model
    cannot hold was charged as a release and then crashed the round (the lender's budget spent on nothing, a
    coordinator draining it round after round); it is refused, signed, before anything is charged."""
    context, home = make_lender(tmp_path / "lender", GBDT, 0)
    model = _model(GBDT, 1)
    model.grown[0] = grown
    reply = lender_train(message(GBDT, 1, model=model), context)
    body = _body(reply)
    assert body["type"] == "lender_refusal" and body["limit"] == "model", body
    assert "grown" in body["reason"] and spent(home, GBDT)["releases"] == 0


def test_a_gbdt_request_under_secure_aggregation_without_the_protocol_releases_nothing(tmp_path):
    """gbdt runs under secure aggregation only through the protocol (a roster the lender checked, masks): a train
    request that says secure aggregation but skips the protocol's steps would have the lender send its sums with a
    share of the noise and no mask. The lender refuses it with one line, and nothing is computed, charged or sent
    (it used to fail on a KeyError)."""
    from federation.secagg import SecAggError

    context, home = make_lender(tmp_path / "lender", GBDT, 0)
    with pytest.raises(SecAggError, match="no secure-aggregation record"):
        lender_train(message(GBDT, 1, model=_model(GBDT, 1), **{"secure-aggregation": True}), context)
    assert spent(home, GBDT)["releases"] == 0


def test_the_lifetime_maximum_binds_across_gbdt_runs(tmp_path):
    """A coordinator starting a new run (another seed) to reset the budget: the lender composes every run's
    releases and refuses the one that would take it past its lifetime maximum."""
    context, home = make_lender(tmp_path / "lender", GBDT, 0, max_epsilon=4.0)
    for rnd in (1, 2, 3):  # the first run spends its budget of 3
        assert _body(lender_train(message(GBDT, rnd, model=_model(GBDT, rnd)), context))["type"] == "lender_update"
    second, bodies = GBDT.replace(seed=1), []
    for rnd in (1, 2, 3):
        bodies.append(_body(lender_train(message(second, rnd, model=_model(second, rnd)), context)))
    assert bodies[-1]["type"] == "lender_refusal" and bodies[-1]["limit"] == "max_epsilon", bodies[-1]
    assert epsilon(_all_events(home), bodies[0]["delta"]) <= 4.0


def test_a_delta_above_the_lenders_is_refused_before_a_gbdt_release(tmp_path):
    context, home = make_lender(tmp_path / "lender", GBDT, 0)
    evil = GBDT.replace(delta=1e-3)  # the lender's own rule gives about 1/n^1.1 = 4e-4 for its 1,156 records
    body = _body(lender_train(message(evil, 1, model=_model(evil, 1)), context))
    assert body["type"] == "lender_refusal" and body["limit"] == "delta", body
    assert spent(home, evil)["releases"] == 0


# ---- a coordinator rewriting the ledger ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    return run(GBDT.replace(output_dir=str(tmp_path_factory.mktemp("redteam") / "run")), on_round=_quiet)


@pytest.fixture
def copy_of(dp_run, tmp_path):
    return copy_run(dp_run, tmp_path / "run")


def _fails(folder, check, contains=""):
    with pytest.raises(VerificationFailed) as info:
        verify_run(folder, f"{folder}-registry.json")
    assert info.value.check == check, str(info.value)
    assert contains in str(info.value), str(info.value)


def _aggregates(entries) -> list[dict]:
    return [e["body"] for e in entries if e["type"] == L.AGGREGATE]


def _rehash_models(entries, cfg: RunConfig) -> None:
    """What a thorough forger does after editing the gbdt records: recompute every round's model from the records
    as edited and write its hash into the aggregate (and the run's final model hash), so that only what the
    lenders signed can stand against the edit."""
    n_features = len(next(e for e in entries if e["type"] == L.LENDER_MANIFEST)["body"]["features"])
    model = {k: v.numpy().copy() for k, v in build_tree_model(cfg, n_features).state_dict().items()}
    for agg in _aggregates(entries):
        sent = _asked(model, agg["round"], agg, cfg)
        released = agg["gbdt"]["released"]
        signed = {int(x): arrays_hash({LEAF_SUMS: np.asarray(s, dtype=np.float64)}) for x, s in released.items()}
        model = _grow(sent, agg["round"], agg, cfg, signed)
        agg["model_hash"] = arrays_hash(model)
    entries[-1]["body"]["model_hash"] = agg["model_hash"]


def _caught_twice(folder, rnd: int) -> None:
    """The lenders' signed scores of each round's model catch the edit first; the gbdt check of the ledger alone
    (the model rebuilt from the recorded structures and signed sums) catches it too."""
    from federation.audit_trail.gbdt_ledger import LedgerModelMismatch, rederived_arrays
    from federation.audit_trail.run_view import RunView

    _fails(folder, "evaluation", f"round {rnd}")
    with pytest.raises(LedgerModelMismatch, match=f"round {rnd}"):
        rederived_arrays(RunView(entries_of(folder)), GBDT)


def test_reordered_trees_within_a_round_are_caught(copy_of):
    """Tree order matters to nobody's logit, but a ledger that reorders a round's trees (structures and every
    lender's sums alike, models re-derived) no longer holds what the lenders signed."""
    entries = entries_of(copy_of)
    record = _aggregates(entries)[1]["gbdt"]
    record["features"].reverse()
    record["thresholds"].reverse()
    for sums in record["released"].values():
        sums.reverse()
    _rehash_models(entries, GBDT)
    Forger(copy_of).write(entries)
    _caught_twice(copy_of, 2)


def test_an_aggregate_replayed_from_another_round_is_caught(copy_of):
    """Round 3's aggregate made of round 1's structures and released sums (a draw the coordinator liked better)."""
    entries = entries_of(copy_of)
    first, last = _aggregates(entries)[0]["gbdt"], _aggregates(entries)[2]["gbdt"]
    for key in ("features", "thresholds", "released"):
        last[key] = json.loads(json.dumps(first[key]))
    _rehash_models(entries, GBDT)
    Forger(copy_of).write(entries)
    _caught_twice(copy_of, 3)


def test_a_ledger_claiming_fewer_trees_per_round_than_released_is_caught(copy_of):
    """The run's configuration says 1 tree a round (sensitivity 1) while the lenders released sums of 2."""
    entries = entries_of(copy_of)
    config = entries[0]["body"]["config"]
    config["gbdt-trees-per-round"] = 1
    entries[0]["body"]["run"] = config_hash(config)  # the run id the edited configuration hashes to
    Forger(copy_of).write(restate_privacy(entries))
    _fails(copy_of, "run", "names another run")  # every lender signed the run id of the configuration it got


def test_an_edited_ensemble_in_model_json_is_caught(copy_of):
    model_json = json.loads((copy_of / "model.json").read_text())
    model_json["ensemble"]["trees"][0]["values"][0] += 0.5
    Forger(copy_of).write(entries_of(copy_of), tamper={"model.json": json.dumps(model_json).encode()})
    _fails(copy_of, "files")


def test_a_larger_noise_multiplier_claimed_in_the_privacy_summary_is_caught(copy_of):
    privacy = json.loads((copy_of / "privacy.json").read_text())
    for unit in privacy["units"].values():
        if unit.get("noise_multiplier"):
            unit["noise_multiplier"] *= 2
    Forger(copy_of).write(entries_of(copy_of), tamper={"privacy.json": json.dumps(privacy).encode()})
    _fails(copy_of, "files")


def test_a_lenders_release_left_out_of_the_ledger_is_caught(copy_of):
    """The coordinator hides lender 2's last release (it used it off the books): its update and sums leave the
    ledger, recorded instead as an update it rejected, the round's model is re-derived from the two others and the
    privacy summary restated. The lender's own signed count of its releases stands against it."""
    entries = entries_of(copy_of)
    last = _aggregates(entries)[2]
    last["lenders"].remove(2)
    del last["gbdt"]["released"]["2"]
    for i, e in enumerate(entries):
        if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 2 and e["body"]["round"] == 3:
            rejected = {"round": 3, "lender": 2, "reason": "no reply", "stage": "train"}
            entries[i] = {**e, "type": L.UPDATE_REJECTED, "signer": L.COORDINATOR, "body": rejected}  # re-signed
    _rehash_models(entries, GBDT)
    Forger(copy_of).write(restate_privacy(entries))
    _fails(copy_of, "evaluation", "round 3")  # the lenders scored the model with lender 2's sums in it
    from federation.audit_trail.run_view import RunView
    from federation.audit_trail.verify import _check_releases

    with pytest.raises(VerificationFailed, match="counts 3 releases"):  # and lender 2 counts its hidden release
        _check_releases(RunView(entries_of(copy_of)), GBDT)


def test_different_structures_sent_to_different_lenders_are_caught(tmp_path, monkeypatch):
    """The coordinator sends one lender other trees than the others (to single out its records), and records the
    structure the others got: that lender signed the digest of the model it was sent, which the ledger's structure
    does not give."""
    from flwr.app import Array, ArrayRecord

    import server.gbdt_strategy as strategy

    honest = strategy.GbdtStrategy.configure_train

    def configure(self, rnd, arrays, config, grid):
        messages = honest(self, rnd, arrays, config, grid)
        target = messages[-1]
        model = {k: v.numpy().copy() for k, v in target.content[ARRAYS].items()}
        model["thresholds"][round_trees(self.cfg, rnd)] = 0  # every split at the lowest bin edge
        target.content[ARRAYS] = ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in model.items()})
        return messages

    monkeypatch.setattr(strategy.GbdtStrategy, "configure_train", configure)
    folder = run(GBDT.replace(rounds=1, output_dir=str(tmp_path / "run")), on_round=_quiet)
    _fails(folder, "model", "signed a request for another model")


def test_earlier_trees_changed_in_one_lenders_request_are_caught(tmp_path, monkeypatch):
    """Round 2's request to one lender carries the ledger's new structure, but round 1's leaf values of the
    coordinator's choosing (residuals steered at that lender's records): the lender signed the digest of the model it
    was sent, and the ledger's round 1 aggregate with round 2's recorded structure does not give it."""
    from flwr.app import Array, ArrayRecord

    import server.gbdt_strategy as strategy

    honest = strategy.GbdtStrategy.configure_train

    def configure(self, rnd, arrays, config, grid):
        messages = honest(self, rnd, arrays, config, grid)
        if rnd == 2:
            target = messages[0]
            model = {k: v.numpy().copy() for k, v in target.content[ARRAYS].items()}
            model["values"][round_trees(self.cfg, 1)] += 0.25
            target.content[ARRAYS] = ArrayRecord(
                array_dict={k: Array(np.ascontiguousarray(v)) for k, v in model.items()}
            )
        return messages

    monkeypatch.setattr(strategy.GbdtStrategy, "configure_train", configure)
    folder = run(GBDT.replace(rounds=2, output_dir=str(tmp_path / "run")), on_round=_quiet)
    _fails(folder, "model", "round 2: lender 0 signed a request for another model")


def test_a_round_marked_skipped_whose_model_still_uses_its_sums_is_caught(copy_of):
    """The coordinator keeps round 3's trees (grown from the lenders' sums) but records the round as skipped,
    with no structures or sums, so that no one can check them: the lenders scored that model, so their signatures
    agree with it, and only the rebuild from the ledger (a skipped round leaves the model as it was) disagrees."""
    entries = entries_of(copy_of)
    last = _aggregates(entries)[2]
    del last["gbdt"]
    last.update({"lenders": [], "skipped": True, "reason": "no usable update"})
    Forger(copy_of).write(restate_privacy(entries))
    # caught first for skipping a round that accepted updates (since the red team of the count release), and, were
    # that allowed, by the rebuild: a skipped round leaves the model as it was
    _fails(copy_of, "model", "round 3 is recorded as skipped ('no usable update'), but it accepted updates")
