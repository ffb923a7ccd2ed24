"""The lender's training round: is the request inside its policy, does its budget admit the release, then train.

The coordinator's run configuration is only a request. Before anything is released the lender checks it against
its own policy (federation/lender_policy.py) and its own record of what it has spent, and declines with a signed
refusal naming the limit when it falls outside:
- the data: the dataset and (when the coordinator names one) the card must be the lender's own;
- DP required, lender-level DP (the coordinator adds that noise) and seeded noise only where the policy allows;
- the requested budget within `max_epsilon`; the requested delta within the lender's delta; a fixed noise
  multiplier, or the one calibrated to the budget, at least `min_noise_multiplier`; the clip norm at most
  `max_clip_norm`; a training split that can train a credit model;
- the release itself: epsilon of this run's releases and this one within the requested budget, and epsilon of
  every release ever made with this folder (all runs) within `max_epsilon`.
A gbdt round (`--model gbdt`) is the same release path: instead of DP-SGD the lender sums the gradients and hessians
of its records per leaf of the round's new trees and adds Gaussian noise of its own (federation/gbdt_release.py);
the same checks, with the leaf sums' sensitivity in place of the clip norm, come first. With noisy-quantile split
candidates, round 1 releases the lender's scaled record counts per feature and bin instead, at the noise multiplier
of its share of the budget (the same sensitivity).
Every release is counted: each time the lender trains and sends, one event and one release number. A request
repeated exactly (a coordinator that crashed and resumed) gets the reply already sent, byte for byte, which
reveals nothing new; any other request is a new release.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, MetricRecordValues, RecordDict

from clients.session import Session
from federation.audit_trail import checkpoint
from federation.audit_trail.attest import refusal_body, update_body
from federation.errors import ConfigError
from federation.gbdt.leaf_sums import secure_noise_share
from federation.gbdt_release import (
    COUNTS,
    calibrated_noises,
    exact_counts,
    exact_leaf_sums,
    release_clip_norm,
    released,
    reply_name_and_shape,
    round_event,
)
from federation.lender_policy import effective_delta
from federation.messages import ARRAYS, ATTESTATION, MASKED, METRICS, SECAGG, numpy_arrays
from federation.model import build_model, model_for, set_arrays
from federation.policy import label_problem
from federation.privacy.accountant import calibrate_noise, default_delta, epsilon, sample_rate, steps_per_epoch
from federation.privacy.events import PrivacyEvent
from federation.privacy.lender_level_mechanism import clip_update
from federation.privacy.limits import MAX_DELTA, check_delta
from federation.privacy.noise import SecureRandomness, SeededRandomness, noise_source
from federation.secagg import SecAggError, sum_noise_problem
from federation.training import DPSettings, LocalOptimizer, train_local
from federation.tree_model import ensemble_of, is_count_round, tree_count

log = logging.getLogger("fedcredit.lender")


@dataclass(frozen=True)
class Refusal:
    limit: str  # the policy key (or "budget", "labels", "closed") that stops the round
    requested: Any
    allowed: Any
    reason: str


def required(value: float | None, what: str) -> float:
    """A record-level DP quantity (its budget, delta, epsilon): a record-level round always has each, so None
    here is a bug in the lender's round, raised as one rather than signed or sent."""
    if value is None:
        raise RuntimeError(f"record-level DP without its {what}: a bug in the lender's round")
    return value


def applied_noise_multiplier(recorded: float) -> float:
    """The noise multiplier the DP step really uses: the one recorded in the release's event. A seam for the one
    test that must prove an under-noised run is caught by the audit (tests/test_audit.py replaces it); nothing
    else changes it."""
    return recorded


# The largest weight magnitude a lender trains from. A crafted model with enormous weights can make the forward
# pass overflow for some records only; such a model is refused whole (a decision on the model alone, never on
# the data), and per-example gradients that still are not finite count as zero (federation/training.py).
MAX_MODEL_MAGNITUDE = 1e6


def model_refusal(session: Session, incoming: dict[str, np.ndarray]) -> Refusal | None:
    """The incoming model must be the run's model, finite and of bounded magnitude."""
    cfg, data = session.request, session.data
    expected = {k: tuple(v.shape) for k, v in model_for(cfg, len(data.features)).state_dict().items()}
    shapes = {k: tuple(np.shape(v)) for k, v in incoming.items()}
    if shapes != expected:
        return Refusal("model", str(shapes), str(expected), "the model sent is not the run's model")
    peak = float(np.max([np.abs(v).max() for v in incoming.values() if np.size(v)], initial=0.0))  # NaN propagates
    if not np.isfinite(peak) or peak > MAX_MODEL_MAGNITUDE:
        return Refusal(
            "model",
            None,
            MAX_MODEL_MAGNITUDE,
            f"the model sent holds a weight of magnitude {peak:.3g}; "
            f"this lender trains only from finite weights of magnitude at most {MAX_MODEL_MAGNITUDE:g}",
        )
    if cfg.model == "gbdt":
        # The release is the sums of the round's rows of trees: a round outside 1..rounds names no rows (Python's
        # slices would read a negative one as rows from the end), so it is refused here, before it is charged.
        if not 1 <= session.round <= cfg.rounds:
            return Refusal(
                "round",
                session.round,
                cfg.rounds,
                f"round {session.round} is not a round of this {cfg.rounds}-round run",
            )
        try:  # every tree it holds, and the count it says are grown, must be of a valid ensemble
            ensemble_of(incoming, len(data.features), cfg.gbdt_bins, cfg.gbdt_learning_rate, trees=tree_count(cfg))
            ensemble_of(incoming, len(data.features), cfg.gbdt_bins, cfg.gbdt_learning_rate)
        except ValueError as exc:
            return Refusal("model", None, None, f"the model sent is not a valid ensemble: {exc}")
    return None


def request_refusal(session: Session) -> Refusal | None:
    """The checks that need no privacy state: the request against the lender's policy and data."""
    cfg, policy, manifest = session.request, session.policy, session.data.manifest
    own_dataset = policy.data.get("dataset")
    if cfg.dataset != own_dataset:
        return Refusal(
            "dataset",
            cfg.dataset,
            own_dataset,
            f"the coordinator asks for dataset '{cfg.dataset}'; this lender holds '{own_dataset}'",
        )
    if cfg.card_sha256 and cfg.card_sha256 != manifest["card_sha256"]:
        return Refusal(
            "card",
            cfg.card_sha256,
            manifest["card_sha256"],
            "the coordinator names another dataset "
            "card than this lender's own; a lender never takes its card from the coordinator",
        )
    if not cfg.dp:
        if policy.require_dp:
            return Refusal("require_dp", False, True, "this lender's policy requires differential privacy")
    else:
        if cfg.dp_level == "lender" and not policy.allow_lender_level:
            return Refusal(
                "allow_lender_level",
                True,
                False,
                "lender-level DP has the coordinator add the noise; this lender's policy does not allow it",
            )
        budget = cfg.budget_for(session.lender)
        if budget > policy.max_epsilon:
            return Refusal(
                "max_epsilon",
                budget,
                policy.max_epsilon,
                f"the requested budget epsilon {budget:g} is above this lender's maximum {policy.max_epsilon:g}",
            )
        if cfg.dp_level == "record":  # the unit is one of its records: its own count sets the rule
            own_delta = effective_delta(0.0, policy.delta, session.own_records)
            try:  # a lender too small for a meaningful guarantee at its delta, or a delta above 1/n, trains nothing
                check_delta(
                    session.own_records,
                    effective_delta(cfg.delta, policy.delta, session.own_records),
                    f"lender {session.lender}",
                )
            except ConfigError as exc:
                return Refusal("delta", cfg.delta or own_delta, MAX_DELTA, str(exc))
            if cfg.delta > own_delta:
                return Refusal(
                    "delta",
                    cfg.delta,
                    own_delta,
                    f"the requested delta {cfg.delta:g} is above this lender's delta {own_delta:.3g}",
                )
        else:  # the unit is a whole lender: the federation's size sets the rule
            try:
                check_delta(
                    cfg.lenders,
                    cfg.delta or default_delta(cfg.lenders),
                    "the federation (lender-level DP)",
                    unit="lenders",
                )
            except ConfigError as exc:
                return Refusal("delta", cfg.delta, MAX_DELTA, str(exc))
        if cfg.noise_multiplier and cfg.noise_multiplier < policy.min_noise_multiplier:
            return Refusal(
                "min_noise_multiplier",
                cfg.noise_multiplier,
                policy.min_noise_multiplier,
                f"the requested noise multiplier {cfg.noise_multiplier:g} is below this lender's floor "
                f"{policy.min_noise_multiplier:g}",
            )
        clip = release_clip_norm(cfg)  # gbdt: the sensitivity of its leaf sums
        if clip > policy.max_clip_norm:
            return Refusal(
                "max_clip_norm",
                clip,
                policy.max_clip_norm,
                f"the requested {'sensitivity' if cfg.model == 'gbdt' else 'clip norm'} {clip:g} is above this "
                f"lender's maximum {policy.max_clip_norm:g}",
            )
    if cfg.reproducible_noise_not_private and cfg.dp and not policy.allow_reproducible_noise:
        return Refusal(
            "allow_reproducible_noise",
            True,
            False,
            "seeded noise is not private; this lender's policy does not allow it",
        )
    problem = label_problem(session.data.y_train)
    if problem:
        return Refusal("labels", None, None, problem)
    return None


def train(session: Session) -> Message:
    """One training request: resend what was sent, or refuse with the limit, or pay for one release and train."""
    s, cfg = session, session.request
    _injected_failure(s)
    digest = s.digest(s.received_hash)
    if not cfg.secure_aggregation:  # a masked update is masked afresh each round: never resent
        sent = s.home.sent_reply(s.run, s.round, digest)
        if sent is not None:
            return _resend(sent, s.msg)
    refusal = request_refusal(s) or model_refusal(s, s.received)
    record_level = cfg.dp and cfg.dp_level == "record"
    with s.home.spent() as spent:
        account = spent["runs"].setdefault(s.run, {"releases": 0, "events": [], "sigma": None, "closed": False})
        delta = effective_delta(cfg.delta, s.policy.delta, s.own_records) if cfg.dp else None
        budget = cfg.budget_for(s.lender) if cfg.dp else None
        run_events = [PrivacyEvent.from_dict(e) for e in account["events"]]
        closed = Refusal("closed", None, None, "this lender already signed its final statement for this run")
        # A request this lender refused for another limit before it signed its final statement (a resumed run asking
        # its last round again) is refused again exactly as it was: refused for being closed, it put a second refusal
        # of one request in the ledger, and the lender's count was one short (found by a red team).
        refused_before = account.get("refused", {}).get(digest) not in (None, "closed")
        if refusal is None and account["closed"] and not refused_before:
            refusal = closed
        planned = None
        if refusal is None and record_level:
            planned = _planned_event(s, account, required(budget, "budget"), required(delta, "delta"))
            refusal = _budget_refusal(
                s, spent, run_events, planned, required(budget, "budget"), required(delta, "delta"), cfg.accountant
            )
        if refusal is None and account["closed"]:  # whatever the budget says, no release after the final statement
            refusal = closed
        secure_sum = None
        if refusal is None and planned is not None and cfg.model == "gbdt" and cfg.secure_aggregation:
            secure_sum, refusal = _secure_sum_terms(s, planned)
        if refusal is not None:
            spent_now = epsilon(run_events, required(delta, "delta"), cfg.accountant) if record_level else None
            account.setdefault("refused", {})[digest] = refusal.limit
            return _refuse(s, refusal, digest, spent_now, budget, delta)
        if cfg.secure_aggregation:
            _mask_once_this_round(s, account)
        # Counted before training: whatever leaves the lender from here on (an update, or even an error whose
        # occurrence could depend on the noisy result) has been paid for. The state is saved even if training fails.
        account["releases"] += 1
        if planned is not None:
            account["events"].append(planned.to_dict())
            run_events.append(planned)
        release = account["releases"]
        try:
            # (two arguments where there is no share: tests wrap _train_once with that signature)
            arrays = _train_once(s, planned) if secure_sum is None else _train_once(s, planned, secure_sum)
        except Exception as exc:
            arrays = _failed_release(s, release, exc)
    eps = epsilon(run_events, required(delta, "delta"), cfg.accountant) if record_level else None
    return _release_reply(s, arrays, digest, release, planned, eps, budget, delta, secure_sum)


def _failed_release(s: Session, release: int, exc: Exception) -> ArrayRecord:
    """What leaves the lender when its training fails after the release was counted: no arrays at all.

    The release stays paid for (whether training fails can depend on the noisy result), so it is signed and sent
    like any other, with nothing in it: the coordinator records it and its event, rejects the empty update, and the
    lender's final count agrees with the ledger. An error reply instead left a release the coordinator never saw,
    and the whole run failed at the lenders' final statements. The error's text stays here, in the lender's log: it
    may say something about the lender's records."""
    log.warning(
        "lender %d, round %d: training failed after release %d was counted: %s", s.lender, s.round, release, exc
    )
    return ArrayRecord()


def _injected_failure(s: Session) -> None:
    """Fault injection (tests, benchmarks): this lender crashes before doing anything this round (nothing is
    released), with the probability the request's fail-rate gives."""
    cfg = s.request
    if cfg.fail_rate and np.random.default_rng([cfg.seed, s.lender, s.round, 0xFA11]).random() < cfg.fail_rate:
        raise RuntimeError(f"injected failure of lender {s.lender} in round {s.round}")


def _planned_event(s: Session, account: dict, budget: float, delta: float) -> PrivacyEvent:
    """The DP-SGD event this round would be. Sigma is calibrated once for the whole run (rounds x local steps),
    never per round, or fixed by the request; it is kept in the lender's account for the rounds that follow."""
    cfg = s.request
    if cfg.model == "gbdt":  # one unsampled Gaussian release a round (federation/gbdt_release.py)
        if not account["sigma"]:  # both calibrated once: the count release's (if any) and every leaf-sum round's
            count_sigma, sigma = calibrated_noises(cfg, budget, delta)
            account["sigma"], account["count_sigma"] = float(sigma), count_sigma
        if is_count_round(cfg, s.round):
            return round_event(cfg, s.lender, s.round, float(account["count_sigma"]))
        return round_event(cfg, s.lender, s.round, account["sigma"])
    n = len(s.data.y_train)
    q, steps = sample_rate(n, cfg.batch_size), cfg.local_epochs * steps_per_epoch(n, cfg.batch_size)
    sigma = (
        account["sigma"]
        or cfg.noise_multiplier
        or calibrate_noise(budget, delta, q, cfg.rounds * steps, cfg.accountant)
    )
    account["sigma"] = float(sigma)
    return PrivacyEvent(s.lender, s.round, float(sigma), q, steps, cfg.clip_norm)


def _secure_sum_terms(s: Session, planned: PrivacyEvent) -> tuple[dict | None, Refusal | None]:
    """gbdt under secure aggregation: the noise this lender adds itself, from its own policy and the threshold of
    the roster it checked (federation.gbdt.leaf_sums.secure_noise_share), signed into its update; or why not.

    The event keeps the run's noise multiplier z (the epsilon under the lender's assumption); `share_noise_multiplier`
    is what its own noise alone gives (the epsilon without it). No opt-in: the share is z itself."""
    from clients import secagg

    request = secagg.request_record(s.msg.content, SECAGG)
    roster = secagg.signed_roster(s.context, s.round, s.run, s.lender, request)
    threshold, colluders = roster.threshold, s.policy.secure_sum_colluders
    try:
        share = secure_noise_share(planned.noise_multiplier, threshold, colluders, roster.size)
    except ValueError as exc:
        return None, Refusal("secure_sum_colluders", colluders, threshold - 1, f"secure sum: {exc}")
    problem = sum_noise_problem(share * planned.clip_norm)
    if problem:
        return None, Refusal("secure_sum", share, None, problem)
    return {"colluders": colluders, "threshold": threshold, "share_noise_multiplier": share}, None


def _mask_once_this_round(s: Session, account: dict) -> None:
    """Masks once a round, under the lock: two concurrent requests must not both mask (the same masks on two
    updates would reveal their difference)."""
    done = account.setdefault("secagg", {}).setdefault(str(s.round), {})
    if "masked" in done:
        raise SecAggError(
            f"lender {s.lender} already masked an update in round {s.round}: the same masks on "
            "another update would reveal the difference"
        )
    done["masked"] = True


def _release_reply(
    s: Session,
    arrays: ArrayRecord,
    digest: str,
    release: int,
    planned: PrivacyEvent | None,
    eps: float | None,
    budget: float | None,
    delta: float | None,
    secure_sum: dict | None = None,
) -> Message:
    """The reply for one release: the arrays, scalar metrics, and the signed update (numbered: the lender's
    `release`-th); kept byte for byte so that the same request again gets the same reply."""
    cfg = s.request
    record_level = planned is not None
    metrics: dict[str, MetricRecordValues] = {
        "lender-id": s.lender,
        "server-round": s.round,
        "num-examples": s.own_records,
        "declined": 0,
    }
    if planned is not None:  # record-level DP
        metrics.update(
            {
                "epsilon": required(eps, "epsilon"),
                "delta": required(delta, "delta"),
                "noise-multiplier": planned.noise_multiplier,
                "sample-rate": planned.sample_rate,
                "steps": planned.steps,
                "clip-norm": release_clip_norm(cfg),
                "epsilon-budget": required(budget, "budget"),
            }
        )
    body = update_body(
        s.run,
        s.lender,
        s.round,
        numpy_arrays(arrays),
        request=digest,
        release=release,
        events=[planned.to_dict()] if planned else [],
        epsilon=eps,
        delta=delta,
        budget=budget,
        accountant=cfg.accountant,
        granularity=cfg.dp_level if cfg.dp else None,
        noise=noise_source(cfg.reproducible_noise_not_private) if record_level else None,
        secure_sum=secure_sum,
        input_model=s.received_hash,
    )
    attestation = s.sign(body)
    if not cfg.secure_aggregation:
        saved = {"arrays": checkpoint.encode_arrays(numpy_arrays(arrays)), "metrics": metrics}
        s.home.save_sent_reply(s.run, s.round, digest, {**saved, "attestation": dict(attestation)})
    return Message(
        RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics), ATTESTATION: attestation}), reply_to=s.msg
    )


def _budget_refusal(
    s: Session,
    spent: dict,
    run_events: list[PrivacyEvent],
    planned: PrivacyEvent,
    budget: float,
    delta: float,
    accountant: str,
) -> Refusal | None:
    policy = s.policy
    if planned.noise_multiplier < policy.min_noise_multiplier:
        return Refusal(
            "min_noise_multiplier",
            planned.noise_multiplier,
            policy.min_noise_multiplier,
            f"the budget asked for allows noise multiplier {planned.noise_multiplier:.3g}, below this "
            f"lender's floor {policy.min_noise_multiplier:g}",
        )
    after = epsilon([*run_events, planned], delta, accountant)
    if after > budget:
        return Refusal(
            "budget",
            after,
            budget,
            f"the next round would take this lender to epsilon {after:.3f}, past its budget {budget:g} for this run",
        )
    earlier = [
        PrivacyEvent.from_dict(e) for run, account in spent["runs"].items() if run != s.run for e in account["events"]
    ]
    if earlier:
        lifetime = epsilon(earlier + run_events + [planned], delta, accountant)
        if lifetime > policy.max_epsilon:
            return Refusal(
                "max_epsilon",
                lifetime,
                policy.max_epsilon,
                f"with its earlier runs this release would "
                f"take this lender to epsilon {lifetime:.3f}, past its maximum {policy.max_epsilon:g}",
            )
    return None


def _train_once(s: Session, planned: PrivacyEvent | None, secure_sum: dict | None = None) -> ArrayRecord:
    """One local training from the received model; returns what leaves the lender (model, or masked update)."""
    cfg, data = s.request, s.data
    if cfg.model == "gbdt":
        return _leaf_sums_once(s, planned, secure_sum)
    model = build_model(cfg.model, len(data.features), cfg.hidden)
    set_arrays(model, s.received)
    received = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dp = None
    if planned is not None:
        dp = DPSettings(applied_noise_multiplier(planned.noise_multiplier), cfg.clip_norm, _randomness(s))
    # Only under FedProx: the run config always carries proximal-mu, so its presence alone means nothing.
    mu = cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0
    result = train_local(
        model,
        data.x_train,
        data.y_train,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=(cfg.seed * 1_000_003 + s.lender * 1009 + s.round) % 2**31,
        dp=dp,
        proximal_mu=mu,
        optim=LocalOptimizer.of(cfg),
    )
    if planned is not None and result.steps != planned.steps:
        raise RuntimeError(f"lender {s.lender} took {result.steps} DP steps, {planned.steps} were admitted")
    if cfg.dp and cfg.dp_level == "lender":
        # Lender-level DP: the coordinator adds the noise; the lender bounds its influence by clipping its whole
        # update (the coordinator clips again, so a lender cannot skip this).
        model.load_state_dict(clip_update(model.state_dict(), received, cfg.clip_norm))
    if cfg.secure_aggregation:
        from clients import secagg

        update = {k: v.detach().numpy() - received[k].numpy() for k, v in model.state_dict().items()}
        masked = secagg.masked_update(
            s.context,
            s.round,
            s.run,
            s.lender,
            secagg.request_record(s.msg.content, SECAGG),
            update,
            cfg.max_update_norm,
            s.own_records,
        )
        return ArrayRecord({MASKED: Array(masked)})
    return ArrayRecord(model.state_dict())


def _leaf_sums_once(s: Session, planned: PrivacyEvent | None, secure_sum: dict | None) -> ArrayRecord:
    """One gbdt release: the leaf sums of the round's trees over the lender's records, plus its own noise (under
    secure aggregation its share, `_secure_sum_terms`), masked as a plain sum under secure aggregation."""
    cfg, data = s.request, s.data
    name, _ = reply_name_and_shape(cfg, s.round, len(data.features))
    if name == COUNTS:  # the count round: the scaled counts per feature and bin, whatever the model sent
        sums = exact_counts(cfg, data.x_train)
    else:
        sums = exact_leaf_sums(cfg, s.received, len(data.features), s.round, data.x_train, data.y_train)
    if planned is not None:
        randomness = _randomness(s)
        if isinstance(randomness, SeededRandomness):
            normal = lambda count: randomness.normal((count,)).numpy()  # noqa: E731
        else:
            normal = lambda count: randomness.stream.secure_normal(count).numpy()  # noqa: E731
        z = secure_sum["share_noise_multiplier"] if secure_sum else planned.noise_multiplier
        sums = released(cfg, sums, applied_noise_multiplier(z), normal)
    if cfg.secure_aggregation:
        from clients import secagg

        request = secagg.request_record(s.msg.content, SECAGG)
        return ArrayRecord({MASKED: Array(secagg.masked_sum(s.context, s.round, s.run, s.lender, request, sums))})
    return ArrayRecord({name: Array(sums)})


def _randomness(s: Session) -> SeededRandomness | SecureRandomness:
    """The lender's own CSPRNG; seeded (NOT private) only where the run asked for it and the policy allowed it."""
    cfg = s.request
    if cfg.reproducible_noise_not_private:
        return SeededRandomness((cfg.seed * 1_000_003 + s.lender * 1009 + s.round) % 2**31)
    return SecureRandomness()


def _refuse(
    s: Session, refusal: Refusal, digest: str, spent: float | None, budget: float | None, delta: float | None
) -> Message:
    body = refusal_body(
        s.run,
        s.lender,
        s.round,
        request=digest,
        limit=refusal.limit,
        requested=_plain(refusal.requested),
        allowed=_plain(refusal.allowed),
        reason=refusal.reason,
        epsilon_spent=spent,
        budget=budget,
        delta=delta,
        accountant=s.request.accountant,
    )
    metrics: dict[str, MetricRecordValues] = {
        "lender-id": s.lender,
        "server-round": s.round,
        "num-examples": s.own_records,
        "declined": 1,
    }
    return Message(RecordDict({METRICS: MetricRecord(metrics), ATTESTATION: s.sign(body)}), reply_to=s.msg)


def _resend(sent: dict, msg: Message) -> Message:
    arrays = ArrayRecord({k: Array(v) for k, v in checkpoint.decode_arrays(sent["arrays"]).items()})
    from flwr.app import ConfigRecord

    return Message(
        RecordDict(
            {ARRAYS: arrays, METRICS: MetricRecord(sent["metrics"]), ATTESTATION: ConfigRecord(sent["attestation"])}
        ),
        reply_to=msg,
    )


def _plain(value: Any) -> Any:
    """A limit's value as JSON allows it (the canonical form refuses NaN and infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
