"""The verifier redoes every round's aggregate from the updates the lenders signed (federation/audit_trail/
aggregate_replay.py), against a coordinator that lies about how it combined them.

Each lie is told during a real run, by a coordinator whose aggregation is patched: the lenders then sign their
evaluations of the model it made, so the ledger is as consistent as a lying coordinator can make it. Before the
updates were published each of these runs verified (README, the verifier's row of the guarantees). Edits made
afterwards, by anyone holding the run folder and the coordinator's key, go through tests/forge.py.
"""

import json

import numpy as np
import pytest

from fedcredit.runner import run
from federation.audit_trail import ledger as L
from federation.audit_trail.checkpoint import decode_arrays, encode_arrays
from federation.audit_trail.verify import VerificationFailed, verify_run
from federation.config import RunConfig
from federation.messages import METRICS
from server.coordinator_strategy import CoordinatorStrategy
from tests.forge import Forger, copy_run, entries_of

CFG = RunConfig(records=2400, lenders=3, rounds=2, epsilon=3.0, engine="inprocess")


def _run(tmp_path, name, cfg=CFG):
    return run(cfg.replace(output_dir=str(tmp_path / name)), on_round=lambda s: None)


def _verified(folder):
    return verify_run(folder, f"{folder}-registry.json")


def _fails(folder, contains):
    with pytest.raises(VerificationFailed) as info:
        _verified(folder)
    assert info.value.check == "aggregate", str(info.value)
    assert contains in str(info.value), str(info.value)


def _aggregates(folder):
    return [e for e in entries_of(folder) if e["type"] == L.AGGREGATE]


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("replay"), "run")


@pytest.mark.parametrize(
    "strategy,model",
    [
        ("fedavg", "mlp"),
        ("fedprox", "logreg"),
        ("fedadam", "logreg"),
        ("fedyogi", "mlp"),
        ("fedadagrad", "logreg"),
        ("fedmedian", "mlp"),
        ("fedtrimmedavg", "logreg"),
    ],
)
def test_every_strategys_honest_aggregates_are_redone_bit_for_bit(tmp_path, strategy, model):
    """The verifier's Flower strategy, fed the published updates, gives each round's model hash exactly (the server
    optimizers' state carried from round to round; FedMedian and FedTrimmedAvg pop the replies' arrays, so the
    coordinator must take the updates before it aggregates)."""
    folder = _run(tmp_path, "run", CFG.replace(strategy=strategy, model=model))
    verified = _verified(folder)
    assert verified.aggregates == (
        f"2 rounds' aggregates redone with Flower's {strategy} from the updates the lenders signed"
    )
    for entry in _aggregates(folder):
        assert sorted(entry["body"]["updates"]) == [str(x) for x in sorted(entry["body"]["lenders"])]
    report = json.loads((folder / "report.json").read_text())  # the reader of the report is told it, too
    assert report["aggregation_check"] == (
        f"every round's aggregate redone with Flower's {strategy} from the updates the lenders signed"
    )


def test_a_coordinator_that_weights_one_lender_double_is_caught(tmp_path, monkeypatch):
    combine = CoordinatorStrategy._combine

    def heavier(self, rnd, arrays, trained, secure):
        metrics = trained[0].content.metric_records[METRICS]
        metrics["num-examples"] = 2 * int(metrics["num-examples"])
        return combine(self, rnd, arrays, trained, secure)

    monkeypatch.setattr(CoordinatorStrategy, "_combine", heavier)
    _fails(_run(tmp_path, "lying"), "round 1's model is not the fedavg of the updates its lenders signed")


def test_a_coordinator_that_names_a_lender_it_left_out_of_the_average_is_caught(tmp_path, monkeypatch):
    combine = CoordinatorStrategy._combine
    monkeypatch.setattr(
        CoordinatorStrategy,
        "_combine",
        lambda self, rnd, arrays, trained, secure: combine(self, rnd, arrays, trained[:-1], secure),
    )
    _fails(_run(tmp_path, "lying"), "round 1's model is not the fedavg")


def test_a_coordinator_that_drops_an_accepted_update_from_the_aggregate_is_caught(tmp_path, monkeypatch):
    """Left out of the average, of the aggregate's lenders and of its published updates, with nothing recorded: the
    lender's signed update stands in the round, so the aggregate must hold it."""
    aggregate = CoordinatorStrategy.aggregate_train

    def without_last(self, rnd, arrays, trained, secure, setup_failure):
        return aggregate(self, rnd, arrays, trained[:-1], secure, setup_failure)

    monkeypatch.setattr(CoordinatorStrategy, "aggregate_train", without_last)
    _fails(_run(tmp_path, "lying"), "accepted update is left out")


def test_a_coordinator_that_steps_another_strategy_than_the_configured_one_is_caught(tmp_path, monkeypatch):
    """The configuration (and the report) says FedAvg; the coordinator takes the coordinate-wise median."""
    from flwr.serverapp.strategy import FedMedian

    import server.strategies as strategies

    monkeypatch.setattr(strategies, "make_strategy", lambda cfg: FedMedian(min_available_nodes=cfg.lenders))
    _fails(_run(tmp_path, "lying"), "round 1's model is not the fedavg")


def test_a_coordinator_that_averages_an_update_nobody_signed_is_caught(tmp_path, monkeypatch):
    """It replaces lender 0's update by one of its own making, in the average and in what it publishes."""
    from flwr.app import Array, ArrayRecord

    from federation.messages import ARRAYS, numpy_arrays

    aggregate = CoordinatorStrategy.aggregate_train

    def replaced(self, rnd, arrays, trained, secure, setup_failure):
        first = numpy_arrays(trained[0].content.array_records[ARRAYS])
        trained[0].content.array_records[ARRAYS] = ArrayRecord(
            {k: Array(v + np.float32(0.25)) for k, v in first.items()}
        )
        return aggregate(self, rnd, arrays, trained, secure, setup_failure)

    monkeypatch.setattr(CoordinatorStrategy, "aggregate_train", replaced)
    _fails(_run(tmp_path, "lying"), "published update is not the one it signed")


def _rewrite_first_aggregate(folder, change):
    entries = entries_of(folder)
    first = next(e for e in entries if e["type"] == L.AGGREGATE)
    change(first["body"])
    Forger(folder).write(entries)


def test_an_aggregate_whose_published_updates_are_removed_afterwards_fails(honest, tmp_path):
    folder = copy_run(honest, tmp_path / "run")
    _rewrite_first_aggregate(folder, lambda body: body.pop("updates"))
    _fails(folder, "does not publish the updates it aggregated")


def test_a_published_update_edited_afterwards_fails(honest, tmp_path):
    folder = copy_run(honest, tmp_path / "run")

    def nudge(body):
        lender = str(body["lenders"][0])
        arrays = decode_arrays(body["updates"][lender])
        body["updates"][lender] = encode_arrays({k: v * np.float32(1.5) for k, v in arrays.items()})

    _rewrite_first_aggregate(folder, nudge)
    _fails(folder, "published update is not the one it signed")


def test_a_published_update_that_is_not_an_array_fails_in_one_line(honest, tmp_path):
    folder = copy_run(honest, tmp_path / "run")

    def garble(body):
        lender = str(body["lenders"][0])
        body["updates"][lender] = {name: "not base64 !" for name in body["updates"][lender]}

    _rewrite_first_aggregate(folder, garble)
    _fails(folder, "published update cannot be read as the model")


def test_the_honest_run_verifies_and_publishes_each_update_exactly_as_signed(honest):
    assert _verified(honest).aggregates.startswith("2 rounds' aggregates redone")
    from federation.audit_trail.canonical import arrays_hash

    entries = entries_of(honest)
    signed = {
        (e["body"]["round"], e["body"]["lender"]): e["body"]["update_hash"]
        for e in entries
        if e["type"] == L.LENDER_UPDATE
    }
    for entry in _aggregates(honest):
        body = entry["body"]
        for lender, encoded in body["updates"].items():
            assert arrays_hash(decode_arrays(encoded)) == signed[(body["round"], int(lender))]


@pytest.mark.parametrize(
    "extra,why",
    [
        ({"dp": False}, "no DP"),
        ({"dp_level": "lender", "delta": 0.001}, "lender-level DP: the updates are un-noised"),
        ({"secure_aggregation": True}, "secure aggregation"),
        ({"reproducible_noise_not_private": True}, "seeded noise"),  # found by the second red team
    ],
)
def test_updates_that_no_epsilon_of_the_lenders_covers_are_never_published(tmp_path, extra, why):
    """Without DP an update carries no guarantee; under lender-level DP it is un-noised (the coordinator noises
    the sum); under secure aggregation nobody sees one; seeded noise is recomputable from the ledger's seed. None of them may reach the run folder, and the verifier
    says what it could not check."""
    folder = _run(tmp_path, "run", CFG.replace(**extra))
    for entry in _aggregates(folder):
        assert "updates" not in entry["body"]
    raw = (folder / "ledger.jsonl").read_text()
    assert all("updates" not in json.loads(line)["body"] for line in raw.splitlines())
    assert why in _verified(folder).aggregates
    report = json.loads((folder / "report.json").read_text())
    assert why in report["aggregation_check"]
    assert report["aggregation_check"] in (folder / "report.html").read_text().replace("&#x27;", "'")


# ---- found by a red team (helper, 2026-12-03) ------------------------------------------------------------------


def test_a_round_recorded_as_skipped_although_it_accepted_updates_fails(tmp_path, monkeypatch):
    """Every update of round 2 accepted (nothing rejected), then the round recorded as skipped with a reason of the
    coordinator's own making and round 1's model kept: the updates left out of the model without a trace."""
    aggregate = CoordinatorStrategy.aggregate_train

    def skip_round_2(self, rnd, arrays, trained, secure, setup_failure):
        return aggregate(self, rnd, arrays, trained, secure, "maintenance window" if rnd == 2 else setup_failure)

    monkeypatch.setattr(CoordinatorStrategy, "aggregate_train", skip_round_2)
    folder = _run(tmp_path, "lying")
    assert not [e for e in entries_of(folder) if e["type"] == L.UPDATE_REJECTED]
    _fails(folder, "round 2 is recorded as skipped ('maintenance window'), but it accepted updates")


def test_a_run_that_finished_no_round_may_publish_only_its_initial_model(tmp_path, monkeypatch):
    """Every lender declines round 1 (its budget allows no round), so no aggregate ties the final model to anything;
    the coordinator publishes a model of its own making as model.pt."""
    from flwr.app import Array, ArrayRecord

    import server.loop as loop
    from federation.audit_trail.canonical import arrays_hash
    from federation.messages import numpy_arrays

    drive = loop.drive_rounds

    def own_model(*args, **kwargs):
        record, arrays, model, strategy = drive(*args, **kwargs)
        mine = ArrayRecord({k: Array(v + np.float32(0.5)) for k, v in numpy_arrays(arrays).items()})
        record.model_hash = arrays_hash(numpy_arrays(mine))
        return record, mine, model, strategy

    monkeypatch.setattr(loop, "drive_rounds", own_model)
    folder = _run(
        tmp_path, "lying", CFG.replace(noise_multiplier=1.0, epsilon_overrides=((0, 0.05), (1, 0.05), (2, 0.05)))
    )
    assert not [e for e in entries_of(folder) if e["type"] == L.ROUND_FINISHED]
    with pytest.raises(VerificationFailed) as info:
        _verified(folder)
    assert info.value.check == "model" and "not the run's initial model" in str(info.value), str(info.value)


def test_the_same_run_without_the_lie_verifies(tmp_path):
    folder = _run(
        tmp_path, "run", CFG.replace(noise_multiplier=1.0, epsilon_overrides=((0, 0.05), (1, 0.05), (2, 0.05)))
    )
    assert not [e for e in entries_of(folder) if e["type"] == L.ROUND_FINISHED]
    assert (
        _verified(folder).aggregates
        == "0 rounds' aggregates redone with Flower's fedavg from the updates the lenders signed"
    )


def _npy_header(header: dict) -> bytes:
    text = repr(header).encode()
    text += b" " * (64 - (10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


@pytest.mark.parametrize(
    "payload",
    [
        _npy_header({"descr": "<f4", "fortran_order": False, "shape": (2**40,)}),  # np.load: MemoryError
        b"PK\x03\x04not a zip",  # np.load reads a zip as an .npz: BadZipFile
        _npy_header({"descr": "<f8", "fortran_order": False, "shape": (3,)}) + bytes(24),  # another dtype
        _npy_header({"descr": "|O", "fortran_order": False, "shape": (3,)}) + bytes(24),  # objects (pickles)
    ],
    ids=["huge-shape", "broken-zip", "float64", "object"],
)
def test_a_crafted_published_update_fails_in_one_line_and_allocates_nothing(honest, tmp_path, payload):
    import base64

    folder = copy_run(honest, tmp_path / "run")

    def craft(body):
        lender = str(body["lenders"][0])
        body["updates"][lender] = {name: base64.b64encode(payload).decode() for name in body["updates"][lender]}

    _rewrite_first_aggregate(folder, craft)
    _fails(folder, "published update cannot be read as the model's arrays")


@pytest.mark.parametrize(
    "lenders", [[[0], 1, 2], [0, True, 2], [0, 0, 1], "0,1,2"], ids=["list", "bool", "twice", "text"]
)
def test_an_aggregate_that_names_lenders_other_than_by_their_numbers_fails_in_one_line(honest, tmp_path, lenders):
    """[[0], 1, 2] made the verifier's set() raise TypeError; [0, True, 2] passed (True == 1) with an update
    published under "True"."""
    folder = copy_run(honest, tmp_path / "run")
    _rewrite_first_aggregate(folder, lambda body: body.__setitem__("lenders", lenders))
    with pytest.raises(VerificationFailed) as info:
        _verified(folder)
    assert info.value.check == "aggregate", str(info.value)


_KILL_BETWEEN = """
import os, signal, sys
import server.{module} as M
from federation.config import RunConfig
from fedcredit.runner import run
original = M.{function}
def then_die(*args, **kwargs):
    original(*args, **kwargs)
    if {round_of} == 2:
        os.kill(os.getpid(), signal.SIGKILL)
M.{function} = then_die
run(RunConfig(records=2400, lenders=3, rounds=3, engine="inprocess", output_dir=sys.argv[1]), on_round=lambda s: None)
"""


@pytest.mark.parametrize(
    "module,function,round_of",
    [
        ("round_driver", "checkpoints.save_round", "args[3]"),  # the checkpoint written, not yet round_finished
        # (M.checkpoints.save_round is server.checkpoints' own: the round driver calls it through the module)
        ("ledger_keeper", "LedgerKeeper.round_finished", "args[1]"),  # both written
    ],
    ids=["after-checkpoint", "after-round-finished"],
)
def test_a_run_killed_as_a_round_ends_resumes_and_verifies(tmp_path, module, function, round_of):
    """kill -9 as round 2 ends. Before the fix the ledger's round_finished came before the checkpoint: killed between
    the two, --resume played round 2 again from round 1's checkpoint and the run could never be finished (round 2
    finished twice). Now the checkpoint comes first, and the resume writes the missing round_finished."""
    import signal
    import subprocess
    import sys

    from fedcredit.runner import resume_config

    target = tmp_path / "killed"
    script = _KILL_BETWEEN.format(module=module, function=function, round_of=round_of)
    child = subprocess.run([sys.executable, "-c", script, str(target)], timeout=600, check=False)
    assert child.returncode == -signal.SIGKILL
    resumed = run(resume_config(target), on_round=lambda s: None, resume=True)
    finished = [e["body"]["round"] for e in entries_of(resumed) if e["type"] == L.ROUND_FINISHED]
    assert finished == [1, 2, 3]
    assert _verified(resumed).aggregates.startswith("3 rounds' aggregates redone")
