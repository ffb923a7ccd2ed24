"""A gbdt run's model, re-derived from its ledger alone.

Each aggregate of a gbdt round records the round's tree structures and every aggregated lender's released (noisy)
leaf sums, exactly as received. Those sums are the lender's DP release (what the epsilon covers), so writing them
to the ledger reveals nothing the coordinator did not already see. From them anyone can rebuild every round's
model: each lender's sums must hash to the update it signed, their sum in lender order gives the Newton leaf values
(federation.gbdt.newton), and the result must hash to the round's recorded model. So a coordinator cannot set a
leaf value, add a tree, or leave a lender's sums out of (or add unsigned sums to) the model without the verifier
seeing it. Each lender also signs the digest of the request it answered (the model it computed its sums on), so
the structure recorded must be the one the lenders were sent. With noisy-quantile split candidates, round 1's
aggregate records the lenders' released counts instead (or their secure sum); the candidates follow from them as the
coordinator's do, and every later split must be one of them. model.json (the ensemble, federation/audit_trail/derive.py) comes from here.
"""

from __future__ import annotations

import hashlib

import numpy as np

from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import arrays_hash, canonical
from federation.audit_trail.run_view import RunView
from federation.config import RunConfig
from federation.gbdt.newton import leaf_values
from federation.gbdt.trees import Ensemble
from federation.gbdt_release import COUNTS, LEAF_SUMS, leaf_sums_shape, reply_name_and_shape, split_candidates
from federation.tree_model import build_tree_model, count_rounds, ensemble_of, is_count_round, round_trees


class LedgerModelMismatch(ValueError):
    """The ledger's gbdt records do not give the model it names (the message says where and what)."""


def round_record(
    rnd: int,
    cfg: RunConfig,
    model: dict[str, np.ndarray],
    released: dict[int, np.ndarray] | None = None,
    secure_sum: np.ndarray | None = None,
) -> dict:
    """What the aggregate of gbdt round `rnd` records: its trees' rows and structure, and each lender's sums (or,
    under secure aggregation, the unmasked sum of the survivors' sums: nothing else was seen)."""
    if is_count_round(cfg, rnd):  # no trees: the count release, from which the split candidates follow
        record: dict = {"count_release": True}
    else:
        rows = round_trees(cfg, rnd)
        record = {
            "trees": [rows.start, rows.stop],
            "features": model["features"][rows].tolist(),
            "thresholds": model["thresholds"][rows].tolist(),
        }
    if secure_sum is not None:
        return {**record, "secure_sum": np.asarray(secure_sum, dtype=np.float64).tolist()}
    return {**record, "released": {str(lender): sums.tolist() for lender, sums in sorted((released or {}).items())}}


def rederived_arrays(view: RunView, cfg: RunConfig) -> dict[str, np.ndarray]:
    """The final model's arrays, rebuilt round by round from the ledger; each round's must hash to its recorded
    model. Raises LedgerModelMismatch naming the first round that does not."""
    n_features = len(view.manifests[0]["features"]) if 0 in view.manifests else 0
    model = {k: v.numpy().copy() for k, v in build_tree_model(cfg, n_features).state_dict().items()}
    candidates = None  # every (feature, threshold) pair, unless a count round's noisy counts leave fewer
    counted = False  # whether the count release (if the run has one) aggregated any lender's counts
    for attempt in view.complete_rounds():
        agg = attempt.aggregate
        if agg is None:
            continue
        rnd = attempt.round
        _aggregates_what_it_accepted(attempt, agg, cfg)
        if agg.get("skipped") is not True:
            counting = is_count_round(cfg, rnd)
            if count_rounds(cfg) and not counting and not counted:
                raise LedgerModelMismatch(
                    f"round {rnd} grows trees, but the count release of round 1 aggregated no lender's counts"
                )
            counted = counted or counting
            sent = model if counting else _asked(model, rnd, agg, cfg, candidates, n_features)
            digest = _request_digest(view, rnd, sent)
            for entry in attempt.of_type(L.LENDER_UPDATE) + attempt.of_type(L.LENDER_REFUSAL):
                if entry["body"].get("request") != digest:
                    raise LedgerModelMismatch(
                        f"round {rnd}: lender {entry['body'].get('lender')} signed a request for another model "
                        "than the round's recorded structure gives"
                    )
            signed = _signed_hashes(attempt.of_type(L.LENDER_UPDATE))
            if counting:
                candidates = split_candidates(cfg, _counted(rnd, agg, cfg, signed, n_features), n_features)
                if agg["gbdt"].get("candidates") != (None if candidates is None else len(candidates)):
                    raise LedgerModelMismatch(
                        f"round {rnd}: the recorded number of split candidates is not the counts'"
                    )
            else:
                model = _grow(sent, rnd, agg, cfg, signed)
        if arrays_hash(model) != agg.get("model_hash"):
            raise LedgerModelMismatch(f"round {rnd}'s model is not the one its recorded structure and leaf sums give")
    try:
        ensemble_of(model, n_features, cfg.gbdt_bins, cfg.gbdt_learning_rate, trees=len(model["values"]))
    except ValueError as exc:
        raise LedgerModelMismatch(f"the recorded trees are not a valid ensemble: {exc}") from None
    return model


def _aggregates_what_it_accepted(attempt, agg: dict, cfg: RunConfig) -> None:
    """The rule the replay of published updates applies (aggregate_replay.py `unaccounted_updates`), here for gbdt:
    a round's aggregate names exactly the lenders whose updates it accepted, and a round is skipped only when it
    accepted nothing (under secure aggregation also when the masked sum could not be opened); and a round that was
    not skipped aggregated someone. Without it a coordinator could leave a lender's released sums or counts out, or
    skip the count release it was paid for, and the model still rebuilt (found by a red team: a count round leaves
    the model unchanged, so its hash could not show it)."""
    from federation.audit_trail.aggregate_replay import unaccounted_updates

    rnd, skipped = attempt.round, agg.get("skipped")
    if "skipped" in agg and skipped is not True:
        raise LedgerModelMismatch(f"round {rnd}'s aggregate says skipped {skipped!r}; a skipped round says true")
    if problem := unaccounted_updates(attempt, agg, cfg.secure_aggregation):
        raise LedgerModelMismatch(problem)
    if skipped is not True and not agg.get("lenders"):
        raise LedgerModelMismatch(f"round {rnd}'s aggregate aggregates no lender; a round without updates is skipped")


def rederived_ensemble(view: RunView, cfg: RunConfig) -> Ensemble:
    n_features = len(view.manifests[0]["features"]) if 0 in view.manifests else 0
    return ensemble_of(rederived_arrays(view, cfg), n_features, cfg.gbdt_bins, cfg.gbdt_learning_rate)


def _request_digest(view: RunView, rnd: int, sent: dict[str, np.ndarray]) -> str:
    """The digest each lender signs of the request it answered (clients/session.py, Session.digest): the run,
    the round, the model sent and the configuration. From the ledger: the model the round's structure gives."""
    config = {**view.config, "server-round": rnd}
    request = {"run": view.started["run"], "round": rnd, "input": arrays_hash(sent), "config": config}
    return hashlib.sha256(canonical(request)).hexdigest()


def _signed_hashes(updates: list[dict]) -> dict[int, str]:
    return {e["body"].get("lender"): e["body"].get("update_hash") for e in updates}


def _asked(
    model: dict[str, np.ndarray],
    rnd: int,
    agg: dict,
    cfg: RunConfig,
    candidates: np.ndarray | None = None,
    n_features: int = 0,
) -> dict[str, np.ndarray]:
    """The model round `rnd` sent: the previous one with the round's recorded tree structures, each split among the
    `candidates` (None: any)."""
    record = agg.get("gbdt")
    rows = round_trees(cfg, rnd)
    if not isinstance(record, dict) or record.get("trees") != [rows.start, rows.stop]:
        raise LedgerModelMismatch(f"round {rnd}'s aggregate does not record its trees {rows.start}..{rows.stop - 1}")
    _exact_keys(rnd, record, cfg, {"trees", "features", "thresholds"})
    try:
        features = np.asarray(record.get("features"), dtype=np.int64)
        thresholds = np.asarray(record.get("thresholds"), dtype=np.int64)
        sent = {k: v.copy() for k, v in model.items()}
        sent["features"][rows] = features.reshape(sent["features"][rows].shape)
        sent["thresholds"][rows] = thresholds.reshape(sent["thresholds"][rows].shape)
    except (TypeError, ValueError, OverflowError):
        raise LedgerModelMismatch(f"round {rnd}'s recorded tree structure is malformed") from None
    if candidates is not None:  # a split outside them was not drawn from what the noisy counts leave
        pairs = sent["features"][rows] * (cfg.gbdt_bins - 1) + sent["thresholds"][rows]
        inside = (sent["thresholds"][rows] >= 0) & (sent["thresholds"][rows] < cfg.gbdt_bins - 1)
        if (
            not (inside & np.isin(pairs, candidates)).all()
            or not ((sent["features"][rows] >= 0) & (sent["features"][rows] < n_features)).all()
        ):
            raise LedgerModelMismatch(
                f"round {rnd}'s trees split where the count release's noisy counts leave no candidate"
            )
    return sent


def _counted(rnd: int, agg: dict, cfg: RunConfig, signed: dict, n_features: int) -> np.ndarray:
    """A count round's summed (noisy, scaled) counts: the unmasked sum under secure aggregation, else the sum of the
    counts each lender signed, in the order the coordinator summed them."""
    record = agg.get("gbdt")
    if not isinstance(record, dict) or record.get("count_release") is not True:
        raise LedgerModelMismatch(f"round {rnd} is the count release; its aggregate does not record one")
    _exact_keys(rnd, record, cfg, {"count_release", "candidates"})
    _, shape = reply_name_and_shape(cfg, rnd, n_features)
    if cfg.secure_aggregation:
        return _secure_sum(rnd, agg, cfg, shape)
    return _signed_total(rnd, agg, cfg, agg.get("lenders") or [], signed, COUNTS, shape)


def _grow(sent: dict[str, np.ndarray], rnd: int, agg: dict, cfg: RunConfig, signed: dict) -> dict[str, np.ndarray]:
    """The round's model: the sent one with the Newton leaf values of the summed recorded leaf sums."""
    rows = round_trees(cfg, rnd)
    lenders = agg.get("lenders") or []
    if cfg.secure_aggregation:
        total = _secure_sum(rnd, agg, cfg)
    else:
        total = _signed_total(rnd, agg, cfg, lenders, signed)
    grown = {k: v.copy() for k, v in sent.items()}
    grown["values"][rows] = leaf_values(
        total[..., 0], total[..., 1], cfg.gbdt_lambda, cfg.gbdt_learning_rate, cfg.gbdt_leaf_clip
    )
    grown["grown"] = np.array([rows.stop], dtype=np.int64)
    return grown


def _exact_keys(rnd: int, record: dict, cfg: RunConfig, kind: set[str]) -> None:
    """A round's gbdt record holds exactly what its kind records, and the sums as the run's aggregation makes them
    (the unmasked sum under secure aggregation, each lender's own otherwise): nothing the verifier would ignore."""
    expected = kind | {"secure_sum" if cfg.secure_aggregation else "released"}
    if set(record) != expected:
        raise LedgerModelMismatch(
            f"round {rnd}'s gbdt record holds {sorted(record)}; a round of its kind records {sorted(expected)}"
        )


def _secure_sum(rnd: int, agg: dict, cfg: RunConfig, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The unmasked sum the aggregate records. The verifier cannot check it against any lender's sums (each
    signed only its masked vector): that it is the survivors' true sum rests on the secure aggregation's own
    checks (signed roster, keys, survivor set and confirmations, federation/audit_trail/verify.py); what the
    verifier does check is that the model is the one this sum gives."""
    record = agg["gbdt"]  # its keys checked by `_exact_keys`: no lender's own sums beside the unmasked one
    try:
        total = np.asarray(record.get("secure_sum"), dtype=np.float64)
    except (TypeError, ValueError):
        raise LedgerModelMismatch(f"round {rnd}: the recorded secure sum is not numbers") from None
    shape = shape or leaf_sums_shape(cfg)
    if total.shape != shape or not np.isfinite(total).all():
        raise LedgerModelMismatch(f"round {rnd}: the recorded secure sum is not {shape} finite numbers")
    return total


def _signed_total(
    rnd: int,
    agg: dict,
    cfg: RunConfig,
    lenders: list,
    signed: dict,
    name: str = LEAF_SUMS,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    released = agg["gbdt"].get("released")
    if not isinstance(released, dict) or sorted(released) != sorted(str(x) for x in lenders):
        raise LedgerModelMismatch(f"round {rnd}'s aggregate records leaf sums of other lenders than it aggregates")
    shape = shape or leaf_sums_shape(cfg)
    total = np.zeros(shape, dtype=np.float64)
    for lender in lenders:  # in the order the coordinator summed them
        try:
            sums = np.asarray(released[str(lender)], dtype=np.float64)
        except (TypeError, ValueError):
            raise LedgerModelMismatch(f"round {rnd}: lender {lender}'s recorded leaf sums are not numbers") from None
        if sums.shape != shape or arrays_hash({name: sums}) != signed.get(lender):
            raise LedgerModelMismatch(f"round {rnd}: lender {lender}'s recorded leaf sums are not the ones it signed")
        total = total + sums
    return total
