"""Differential privacy that holds against the coordinator: the lender owns its randomness, its limits and what it
releases; the mechanism applied is the mechanism recorded.

The adversary is the coordinator (it chooses the run configuration and sees every reply) and whoever reads the
run folder. Each test is the attack that would succeed if the claim were false.
"""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

import clients.dp_round as dp_round
from clients.app import train as lender_train
from clients.home import LenderHome
from fedcredit.runner import Parties, _run_engine, run, set_up_parties, validate
from federation.audit_trail import checkpoint
from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import config_hash
from federation.audit_trail.verify import VerificationFailed, verify_run
from federation.config import RunConfig
from federation.data import LenderData, load_lender
from federation.model import build_model
from federation.privacy.accountant import epsilon, sample_rate, steps_per_epoch
from federation.privacy.events import PrivacyEvent
from federation.privacy.noise import SecureRandomness, SeededRandomness
from federation.training import DPSettings, train_local
from tests.forge import Forger, entries_of
from tests.lender_kit import initial_model, make_lender, message, spent

SMALL = RunConfig(records=3000, lenders=2, rounds=1, epsilon=3.0, engine="inprocess")


def _released(run_dir, lender: int, rnd: int = 1) -> dict[str, np.ndarray]:
    """The exact arrays lender `lender` sent in round `rnd`, as the coordinator received them."""
    cfg = RunConfig.from_record(entries_of(run_dir)[0]["body"]["config"])
    sent = sorted(
        (
            run_dir.parent
            / f"{run_dir.name}-lenders"
            / f"lender_{lender:03d}"
            / "state"
            / "sent"
            / config_hash(cfg.to_record())[:32]
        ).glob(f"round-{rnd}-*.json")
    )
    return checkpoint.decode_arrays(json.loads(sent[0].read_text())["arrays"])


def _recompute_from_config(run_dir, lender: int = 0) -> dict[str, np.ndarray]:
    """The attack: everything the coordinator knows (config.json, its seed, the initial model, even every record of
    the lender) and the noise regenerated from the run seed, as the lender's code once seeded it."""
    cfg = RunConfig.from_record(entries_of(run_dir)[0]["body"]["config"])  # what config.json says, as the ledger has it
    assert json.loads((run_dir / "config.json").read_text())["seed"] == cfg.seed
    unit = json.loads((run_dir / "privacy.json").read_text())["units"][str(lender)]
    data = load_lender(cfg, lender)
    model = initial_model(cfg, lender)
    seed = (cfg.seed * 1_000_003 + lender * 1009 + 1) % 2**31
    train_local(
        model,
        data.x_train,
        data.y_train,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=seed,
        dp=DPSettings(unit["noise_multiplier"], cfg.clip_norm, SeededRandomness(seed)),
    )
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_the_noise_cannot_be_recomputed_from_the_run_seed(tmp_path):
    private = run(SMALL.replace(output_dir=str(tmp_path / "private")), on_round=lambda s: None)
    seeded = run(
        SMALL.replace(reproducible_noise_not_private=True, output_dir=str(tmp_path / "seeded")), on_round=lambda s: None
    )

    def error(folder):
        guess, sent = _recompute_from_config(folder), _released(folder, 0)
        return max(float(np.abs(guess[k] - sent[k]).max()) for k in sent)

    assert error(seeded) < 1e-6  # the attack works where the noise is seeded: the test can fail
    assert error(private) > 1e-2  # and recovers nothing from a default run
    assert (private / "model.pt").read_bytes() != (seeded / "model.pt").read_bytes()


# ---- lender-held limits ----------------------------------------------------------------------------

HONEST = RunConfig(records=3000, lenders=2, rounds=2, epsilon=3.0, engine="inprocess")


@pytest.mark.parametrize(
    "ask, limit",
    [
        ({"epsilon": 40.0}, "max_epsilon"),
        ({"noise_multiplier": 0.01}, "min_noise_multiplier"),
        ({"clip_norm": 1e6}, "max_clip_norm"),
        ({"card_sha256": "ab" * 32}, "card"),
        ({"dataset": "german_credit", "partition": "iid"}, "dataset"),
        ({"dp": False}, "require_dp"),
        ({"dp_level": "lender", "delta": 1e-3}, "allow_lender_level"),
        ({"reproducible_noise_not_private": True}, "allow_reproducible_noise"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_coordinator_asking_outside_a_lenders_policy_gets_signed_refusals_and_nothing(tmp_path, ask, limit):
    honest = HONEST.replace(output_dir=str(tmp_path / "run"))
    honest = honest.replace(card_sha256=validate(honest).card_sha256)
    parties = Parties(tmp_path / "run")
    set_up_parties(honest, parties)  # each lender wrote its own policy
    evil = honest.replace(**ask)
    _run_engine(evil, parties, lambda s: None, False)
    entries = entries_of(tmp_path / "run")
    refusals = [e["body"] for e in entries if e["type"] == L.LENDER_REFUSAL]
    rosters = [e["body"]["roster"] for e in entries if e["type"] == L.ROUND_STARTED]
    # every lender asked refused, in every round asked (at lender level the run goes on: lenders are sampled)
    assert [r["lender"] for r in refusals] == [x for roster in rosters for x in roster]
    assert refusals and {r["limit"] for r in refusals} == {limit}, refusals
    assert not [e for e in entries if e["type"] == L.LENDER_UPDATE]  # nothing was released
    for lender in range(2):
        assert spent(LenderHome(parties.lender(lender)), evil)["releases"] == 0
    completed = json.loads((tmp_path / "run" / "config.json").read_text())["rounds-completed"]
    assert completed == (0 if evil.dp_level == "record" or not evil.dp else evil.rounds)
    verify_run(tmp_path / "run", parties.registry)  # the request and the answers are both in the ledger


def test_a_budget_beyond_what_the_accountants_evaluate_is_no_release(tmp_path):
    context, home = make_lender(tmp_path / "lender", HONEST, 0)
    msg = message(HONEST, 1, model=initial_model(HONEST))
    msg.content["config"]["epsilon"] = 1e9  # a coordinator that skips its own validation
    with pytest.raises(Exception, match="epsilon"):
        lender_train(msg, context)
    assert spent(home, HONEST)["releases"] == 0


def test_a_round_requested_four_times_at_other_batch_sizes_costs_four_releases(tmp_path):
    """The reviewer's attack: round 1 asked four times at batch sizes 64/32/16/8. Each request is another run
    configuration (another run id), so only the lender's lifetime record, across runs, can count all four."""
    cfg = RunConfig(records=3000, lenders=2, rounds=2, epsilon=8.0, noise_multiplier=1.0, engine="inprocess")
    context, home = make_lender(tmp_path / "lender", cfg, 0)
    model = initial_model(cfg)
    bodies = [
        json.loads(
            lender_train(message(cfg.replace(batch_size=b), 1, model=model), context).content["attestation"]["body"]
        )
        for b in (64, 32, 16, 8)
    ]
    assert all(b["type"] == "lender_update" for b in bodies)
    runs = json.loads((home.folder / "state" / "spent.json").read_text())["runs"]
    events = [PrivacyEvent.from_dict(e) for r in runs.values() for e in r["events"]]
    assert len(events) == 4  # four releases, none forgotten
    lifetime = epsilon(events, bodies[0]["delta"])
    assert lifetime > 1.1 * max(b["epsilon"] for b in bodies)  # more than any one of them: all four count
    # the next request that would take the lifetime total past the lender's maximum is refused
    while True:
        body = json.loads(
            lender_train(message(cfg.replace(batch_size=64, seed=len(events)), 1, model=model), context).content[
                "attestation"
            ]["body"]
        )
        if body["type"] == "lender_refusal":
            break
        events.append(PrivacyEvent.from_dict(body["events"][0]))
    assert body["limit"] == "max_epsilon" and epsilon(events, bodies[0]["delta"]) <= 8.0


def test_the_same_request_again_gets_the_same_bytes_and_costs_nothing(tmp_path):
    cfg = RunConfig(records=3000, lenders=2, rounds=2, epsilon=8.0, noise_multiplier=1.0, engine="inprocess")
    context, home = make_lender(tmp_path / "lender", cfg, 0)
    model = initial_model(cfg)
    first, again = (lender_train(message(cfg, 1, model=model), context) for _ in range(2))
    assert first.content["attestation"]["body"] == again.content["attestation"]["body"]
    assert all(
        np.array_equal(first.content["arrays"][k].numpy(), again.content["arrays"][k].numpy())
        for k in first.content["arrays"]
    )
    assert spent(home, cfg)["releases"] == 1


def test_one_run_asked_round_1_from_four_models_counts_four_releases(tmp_path):
    """Within one run: the same round asked again from another model is another release, numbered as such."""
    cfg = RunConfig(records=3000, lenders=2, rounds=2, epsilon=8.0, noise_multiplier=1.0, engine="inprocess")
    context, home = make_lender(tmp_path / "lender", cfg, 0)
    model = initial_model(cfg)
    bodies = []
    for nonce in range(4):
        moved = build_model(cfg.model, model.linear.in_features)
        moved.load_state_dict({k: v + nonce * 1e-3 for k, v in model.state_dict().items()})
        bodies.append(json.loads(lender_train(message(cfg, 1, model=moved), context).content["attestation"]["body"]))
    assert [b["release"] for b in bodies] == [1, 2, 3, 4]
    events = [PrivacyEvent.from_dict(e) for e in spent(home, cfg)["events"]]
    assert len(events) == 4 and bodies[-1]["epsilon"] == pytest.approx(epsilon(events, bodies[-1]["delta"]))
    assert bodies[-1]["epsilon"] > 1.4 * bodies[0]["epsilon"]  # four releases cost more than one (RDP composition)


def test_the_lifetime_budget_holds_across_runs(tmp_path):
    cfg = RunConfig(records=3000, lenders=2, rounds=1, epsilon=3.0, engine="inprocess")
    context, _home = make_lender(tmp_path / "lender", cfg, 0)
    model = initial_model(cfg)
    first = json.loads(lender_train(message(cfg, 1, model=model), context).content["attestation"]["body"])
    assert first["type"] == "lender_update"
    # a new run (another seed: another run id) asks again for the whole budget: the lender's own maximum stops it
    second = json.loads(
        lender_train(message(cfg.replace(seed=1), 1, model=model), context).content["attestation"]["body"]
    )
    assert second["type"] == "lender_refusal" and second["limit"] == "max_epsilon", second


def test_a_lender_with_one_class_declines_before_spending(tmp_path, monkeypatch):
    cfg = RunConfig(records=3000, lenders=2, rounds=1, epsilon=3.0, engine="inprocess")
    context, home = make_lender(tmp_path / "lender", cfg, 0)
    import clients.session as session

    honest = session._records

    def one_class(*args):
        data = honest(*args)
        return LenderData(
            data.lender,
            data.x_train,
            np.zeros_like(data.y_train),
            data.x_test,
            data.y_test,
            data.features,
            data.manifest,
        )

    monkeypatch.setattr(session, "_records", one_class)
    body = json.loads(lender_train(message(cfg, 1, model=initial_model(cfg)), context).content["attestation"]["body"])
    assert body["type"] == "lender_refusal" and body["limit"] == "labels" and "one class" in body["reason"]
    assert spent(home, cfg)["releases"] == 0


# ---- lender level: who was sampled is in the ledger -------------------------------------------------------


def test_lender_level_states_the_epsilon_against_a_reader_of_the_ledger(tmp_path):
    cfg = RunConfig(
        records=6000,
        lenders=6,
        rounds=4,
        dp_level="lender",
        lender_sample_rate=0.5,
        epsilon=8.0,
        delta=1e-3,
        engine="inprocess",
        output_dir=str(tmp_path / "ll"),
    )
    folder = run(cfg, on_round=lambda s: None)
    fed = json.loads((folder / "privacy.json").read_text())["units"]["federation"]
    # No amplification once the sample is known: each lender's epsilon is the Gaussian mechanism composed over the
    # rounds the ledger shows it sampled in (recomputed here with dp_accounting), and a lender sampled in every
    # round would stand above the amplified epsilon. (Which lenders the Poisson draw samples is random: in about 1
    # run in 10 no lender is sampled in more than 2 of the 4 rounds, so the largest known-sampling epsilon itself
    # need not exceed the amplified one.)
    import dp_accounting

    def unamplified(k: int) -> float:
        if k == 0:
            return 0.0
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(fed["noise_multiplier"]), k)
        return accountant.get_epsilon(fed["delta"])

    for lender, k in fed["rounds_sampled"].items():
        assert fed["epsilon_known_sampling"][lender] == pytest.approx(unamplified(k), rel=0.05, abs=1e-9), lender
    assert unamplified(cfg.rounds) > fed["epsilon"]
    assert sum(fed["rounds_sampled"].values()) == sum(
        len(e["body"]["roster"]) for e in entries_of(folder) if e["type"] == L.ROUND_STARTED
    )
    summary = json.loads((folder / "report.json").read_text())["summary"][0]
    assert "against a reader of the ledger" in summary and f"{fed['epsilon_known_sampling_max']:.3f}" in summary
    verify_run(folder, f"{folder}-registry.json")
    entries = entries_of(folder)
    known = entries[-1]["body"]["privacy"]["units"]["federation"]["epsilon_known_sampling"]
    # A lender the coordinator's Poisson draw never sampled has 0 here (1 in 16 for lender 0 at rate 0.5 over 4
    # rounds), and halving 0 changes nothing: forge the largest one, which is above 0 in every run.
    known[max(known, key=known.get)] /= 2
    Forger(folder).write(entries)
    with pytest.raises(VerificationFailed, match="against a reader of the ledger"):
        verify_run(folder, f"{folder}-registry.json")


# ---- the mechanism applied is the mechanism recorded ----------------------------------------------------


def test_the_batches_are_sampled_at_the_recorded_rate(tmp_path, monkeypatch):
    cfg = RunConfig(records=6000, lenders=2, rounds=1, epsilon=3.0, local_epochs=3, engine="inprocess")
    context, _ = make_lender(tmp_path / "lender", cfg, 0)
    sizes, rates = [], []
    honest = SecureRandomness.poisson_batches

    def counting(self, n, q, steps):
        batches = honest(self, n, q, steps)
        sizes.extend((n, len(b)) for b in batches)
        rates.append(q)
        return batches

    monkeypatch.setattr(SecureRandomness, "poisson_batches", counting)
    body = json.loads(lender_train(message(cfg, 1, model=initial_model(cfg)), context).content["attestation"]["body"])
    event = body["events"][0]
    n = sizes[0][0]
    assert event["sample_rate"] == sample_rate(n, cfg.batch_size) == 1 / math.ceil(n / cfg.batch_size)
    assert set(rates) == {event["sample_rate"]} and len(rates) == cfg.local_epochs  # the rate asked of the sampler
    assert event["steps"] == len(sizes) == cfg.local_epochs * steps_per_epoch(n, cfg.batch_size)
    drawn = sum(s for _, s in sizes)
    expected, sd = n * len(sizes) * event["sample_rate"], math.sqrt(n * len(sizes) * event["sample_rate"])
    assert abs(drawn - expected) < 5 * sd, (drawn, expected)  # q/2 would be ~100 standard deviations off


def _zero_gradient_data(n: int, d: int) -> LenderData:
    """Records whose every per-example gradient is exactly zero for a zero-initialised logistic regression
    (x = 0, label 0.5): one DP step then moves the model by the noise alone."""
    x = np.zeros((n, d), np.float32)
    manifest = {"train_records": n, "card_sha256": ""}
    return LenderData(
        0, x, np.full(n, 0.5, np.float32), x[:10], np.zeros(10, np.float32), [f"f{i}" for i in range(d)], manifest
    )


@pytest.mark.parametrize("randomness", [SecureRandomness, lambda: SeededRandomness(7)], ids=["secure", "seeded"])
def test_one_dp_step_adds_noise_of_sigma_times_clip(randomness):
    n, d, sigma, clip, lr = 500, 4000, 2.0, 0.7, 1.0
    data = _zero_gradient_data(n, d)
    model = build_model("logreg", d)
    model.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    train_local(
        model,
        data.x_train,
        data.y_train,
        epochs=1,
        batch_size=n,
        learning_rate=lr,
        seed=0,
        dp=DPSettings(sigma, clip, randomness()),
    )
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().astype(np.float64)
    # one step of SGD from zero: theta = -(lr / expected batch) * noise, expected batch = n (one step per epoch)
    noise_sd = float(np.std(moved * n / lr))
    assert noise_sd == pytest.approx(sigma * clip, rel=0.05)  # half the noise would be 50% off


def test_the_lender_adds_the_noise_it_records(tmp_path, monkeypatch):
    """Through the lender's own round: the released update of a zero-gradient step has the standard deviation
    the signed event promises (noise multiplier x clip norm), so a lender that adds less than it records fails."""
    import clients.session as session

    n, d = 400, 3000
    cfg = RunConfig(
        records=3000,
        lenders=2,
        rounds=1,
        epsilon=8.0,
        noise_multiplier=1.5,
        clip_norm=0.5,
        batch_size=n,
        learning_rate=1.0,
        delta=1e-4,
        engine="inprocess",
    )
    context, _ = make_lender(tmp_path / "lender", cfg, 0)
    monkeypatch.setattr(session, "_records", lambda *args: _zero_gradient_data(n, d))
    monkeypatch.setattr(dp_round, "label_problem", lambda y: None)
    model = build_model("logreg", d)
    model.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    reply = lender_train(message(cfg, 1, model=model), context)
    event = json.loads(reply.content["attestation"]["body"])["events"][0]
    assert event["steps"] == 1 and event["sample_rate"] == 1.0
    released = np.concatenate([v.numpy().ravel() for v in reply.content["arrays"].values()]).astype(np.float64)
    assert float(np.std(released * n / cfg.learning_rate)) == pytest.approx(
        event["noise_multiplier"] * event["clip_norm"], rel=0.06
    )


def test_lender_level_noise_and_denominator_are_the_recorded_ones():
    from server.lender_level_dp import LenderLevelDPStrategy
    from server.strategies import make_strategy

    cfg = RunConfig(
        records=20000,
        lenders=100,
        rounds=3,
        dp_level="lender",
        lender_sample_rate=0.1,
        noise_multiplier=1.3,
        clip_norm=0.8,
        epsilon=8.0,
        delta=1e-3,
    )
    dp = LenderLevelDPStrategy(cfg, make_strategy(cfg), lender_of_node={})
    global_state = {"w": torch.zeros(20000)}
    arrays = ArrayRecord(global_state)
    # noise alone (every update equals the global model): sd = sigma * C / (q N)
    new = dp.noised_aggregate(1, arrays, [ArrayRecord({"w": torch.zeros(20000)}) for _ in range(7)])
    event = dp.budget.events[-1]
    assert float(new.to_torch_state_dict()["w"].std()) == pytest.approx(
        event.noise_multiplier * event.clip_norm / (event.sample_rate * cfg.lenders), rel=0.05
    )
    # no noise: the sum of the clipped updates over the fixed q N, never over the lenders really sampled
    dp.budget.sigma = 0.0
    updates = [ArrayRecord({"w": torch.full((20000,), 0.001)}) for _ in range(7)]
    new = dp.noised_aggregate(2, arrays, updates).to_torch_state_dict()["w"]
    assert float(new.mean()) == pytest.approx(7 * 0.001 / (0.1 * 100), rel=1e-4)
    # and each lender is sampled with the recorded probability
    sampled = sum(len(dp.sample(list(range(100)))) for _ in range(200))
    assert abs(sampled / 20000 - cfg.lender_sample_rate) < 5 * math.sqrt(0.1 * 0.9 / 20000)


def test_the_final_statement_states_the_lifetime_spend_across_runs(tmp_path):
    from clients.app import final as lender_final

    cfg = RunConfig(records=3000, lenders=2, rounds=1, epsilon=1.0, engine="inprocess")
    context, _home = make_lender(tmp_path / "lender", cfg, 0, max_epsilon=3.0)
    model = initial_model(cfg)
    for seed in (0, 1):  # two runs (two run ids) with the same folder
        lender_train(message(cfg.replace(seed=seed), 1, model=model), context)
    body = json.loads(
        lender_final(message(cfg.replace(seed=1), 0, kind="query.final"), context).content["attestation"]["body"]
    )
    assert body["lifetime_runs"] == 2 and body["releases"] == 1
    assert body["lifetime_epsilon"] > 1.2 * body["epsilon"]  # what this run's ledger alone cannot show
    again = lender_train(message(cfg.replace(seed=1), 1, model=initial_model(cfg.replace(seed=5))), context)
    assert json.loads(again.content["attestation"]["body"])["limit"] == "closed"  # no release after its final count


def test_a_closed_lender_refuses_a_request_again_exactly_as_before_and_never_trains(tmp_path):
    """A request this lender refused for its budget, asked again after its final statement (a resumed run that had
    stopped early asks its last round again): the same refusal, byte for byte, not a second one "closed" (the
    lender's refusal count and the ledger then disagreed and the run never verified); a request it never saw is
    refused as closed; neither releases anything."""
    from clients.app import final as lender_final

    cfg = RunConfig(records=3000, lenders=2, rounds=1, epsilon=1.0, noise_multiplier=0.3, engine="inprocess")
    context, home = make_lender(tmp_path / "lender", cfg, 0, max_epsilon=3.0)
    request = message(cfg, 1, model=initial_model(cfg))
    first = json.loads(lender_train(request, context).content["attestation"]["body"])
    assert first["type"] == L.LENDER_REFUSAL and first["limit"] == "budget"
    lender_final(message(cfg, 0, kind="query.final"), context)
    again = json.loads(lender_train(message(cfg, 1, model=initial_model(cfg)), context).content["attestation"]["body"])
    assert again == first
    other = lender_train(message(cfg, 1, model=initial_model(cfg.replace(seed=5))), context)
    assert json.loads(other.content["attestation"]["body"])["limit"] == "closed"
    with home.spent() as spent:
        assert all(account["releases"] == 0 for account in spent["runs"].values())


def test_a_lender_scores_one_model_per_round(tmp_path):
    from clients.app import evaluate as lender_evaluate

    cfg = RunConfig(records=3000, lenders=2, rounds=2, engine="inprocess")
    context, _ = make_lender(tmp_path / "lender", cfg, 0)
    model = initial_model(cfg)
    first = lender_evaluate(message(cfg, 1, kind="evaluate", model=model), context)
    same = lender_evaluate(message(cfg, 1, kind="evaluate", model=model), context)
    assert first.content["attestation"]["body"] == same.content["attestation"]["body"]
    crafted = initial_model(cfg.replace(seed=9))  # a coordinator probing the test records with model after model
    with pytest.raises(PermissionError, match="one model per round"):
        lender_evaluate(message(cfg, 1, kind="evaluate", model=crafted), context)
    with pytest.raises(PermissionError, match="not a round of this run"):
        lender_evaluate(message(cfg, 7, kind="evaluate", model=crafted), context)
