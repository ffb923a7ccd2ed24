"""The lender's side of one secure-aggregation round (the coordinator's is server/secure_rounds.py; the protocol,
its threat model and its limits are in federation/secagg.py).

Five messages a round, Bonawitz et al. (CCS 2017) with the checks of its actively secure variant:
1. keys: check the coordinator's signed roster against the pinned key registry, make this round's secrets and
   advertise the two public keys, signed with the lender's identity key;
2. shares: check every participant's keys are signed by its registered key, then seal Shamir shares of the
   self-mask seed and mask key for every other participant;
3. train: keep the shares sealed for this lender and mask [n_i * clip(update, B), n_i], once;
4. confirm: check the coordinator's signed unmasking request (survivors, dropped) and sign that survivor set,
   the only one it signs this round;
5. unmask: given at least t survivors' signatures on that same set, the self-seed share of each survivor and
   the key share of each dropped lender; never both for one lender, and only once a round.
Every request must hold exactly its own fields (a coordinator-sent "weight" is refused, not ignored) and the
roster checked in step 1. The secrets live in the lender's Flower Context state and never leave it.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, RecordDict

from federation.audit_trail.canonical import canonical
from federation.audit_trail.keys import public_hex, sign
from federation.registry import Registry
from federation.secagg import (
    MAX_WEIGHT,
    Roster,
    SecAggError,
    SecAggLender,
    check_keys,
    check_roster,
    check_unmask,
    count_confirmations,
    flatten,
    keys_body,
    pack_share,
    split_shares,
    sum_quantizer,
    survivors_body,
    weighted_quantizer,
)

STATE = "fedcredit-secagg"
NO_REGISTRY = "secure aggregation needs the federation's key registry pinned in this lender's policy"
ROSTER_FIELDS = {"roster", "roster-signature"}
UNMASK_FIELDS = ROSTER_FIELDS | {"unmask", "unmask-signature"}
REQUEST_FIELDS = {
    "keys": ROSTER_FIELDS | {"position"},
    "shares": ROSTER_FIELDS | {"mask-keys", "channel-keys", "key-signatures"},
    "train": ROSTER_FIELDS | {"sealed", "active"},
    "confirm": UNMASK_FIELDS,
    "unmask": UNMASK_FIELDS | {"confirmations"},
}


def aead_context(run_id: str, rnd: int) -> bytes:
    return f"fedcredit secagg {run_id} round {rnd}".encode()


def _fields(request: ConfigRecord, step: str) -> None:
    """Exactly the step's fields: anything else the coordinator adds (a weight, say) is a refusal, not ignored."""
    expected, present = REQUEST_FIELDS[step], set(request.keys())
    if present != expected:
        extra, missing = sorted(present - expected), sorted(expected - present)
        raise SecAggError(f"the {step} request holds unexpected fields {extra} or lacks {missing}")


def request_record(content: RecordDict, key: str) -> ConfigRecord:
    """The ConfigRecord `key` of the coordinator's message: a request of any other record kind is a refusal."""
    if key not in content:  # a train request under secure aggregation that skipped the protocol's steps
        raise SecAggError(f"the request holds no secure-aggregation record '{key}'")
    record = content[key]
    if not isinstance(record, ConfigRecord):
        raise SecAggError(
            f"the secure-aggregation request '{key}' must be a ConfigRecord, not a {type(record).__name__}"
        )
    return record


# Typed reads of a request's fields and of this lender's own state: a value of another type is a refusal, never
# coerced (an int() of a coordinator's float or string, or bytes() of an int, which is that many zero bytes).
def _int(record: ConfigRecord, key: str) -> int:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise SecAggError(f"'{key}' must be a whole number, not {type(value).__name__}")
    return value


def _list_of(record: ConfigRecord, key: str, kind: type, what: str) -> list:
    """A list value whose every item is a `kind` (a bool is never taken for an int)."""
    value = record[key]
    if not isinstance(value, list):
        raise SecAggError(f"'{key}' must be a list of {what}, not {type(value).__name__}")
    items = [v for v in value if isinstance(v, kind) and not isinstance(v, bool)]
    if len(items) != len(value):
        raise SecAggError(f"'{key}' must be a list of {what}")
    return items


def _ints(record: ConfigRecord, key: str) -> list[int]:
    return _list_of(record, key, int, "whole numbers")


def _bytes(record: ConfigRecord, key: str) -> bytes:
    value = record[key]
    if not isinstance(value, bytes):
        raise SecAggError(f"'{key}' must be bytes, not {type(value).__name__}")
    return value


def _bytes_list(record: ConfigRecord, key: str) -> list[bytes]:
    return _list_of(record, key, bytes, "byte strings")


def _registry(registry: Registry | None) -> Registry:
    if registry is None:
        raise SecAggError(NO_REGISTRY)
    return registry


def _state(context: Context, rnd: int, run_id: str, lender: int, request: ConfigRecord, step: str) -> ConfigRecord:
    """This round's state, once the request has exactly its fields and the roster checked in step 1."""
    _fields(request, step)
    state = context.state.get(STATE)
    if (
        not isinstance(state, ConfigRecord)
        or _int(state, "round") != rnd
        or state["run"] != run_id
        or _int(state, "lender") != lender
    ):
        raise SecAggError(
            f"no secure-aggregation state for run {run_id!r} round {rnd}: the keys step did not happen on this lender"
        )
    if request["roster"] != state["roster"] or request["roster-signature"] != state["roster-signature"]:
        raise SecAggError(f"the roster in the {step} request differs from the one this lender checked in step 1")
    return state


def _roster(state: ConfigRecord) -> Roster:
    return Roster(tuple(_ints(state, "participants")), _int(state, "threshold"))


def advertise(
    context: Context,
    rnd: int,
    run_id: str,
    lender: int,
    identity_key: Ed25519PrivateKey,
    registry: Registry | None,
    request: ConfigRecord,
) -> ConfigRecord:
    """Step 1: check the signed roster; fresh secrets for this round; reply with the public mask and channel
    keys and their signature under this lender's identity key."""
    registry = _registry(registry)
    _fields(request, "keys")
    if registry.lender_key(lender) != public_hex(identity_key):
        raise SecAggError(f"this lender's identity key is not the one the key registry names for lender {lender}")
    roster = check_roster(request["roster"], request["roster-signature"], registry, run_id, rnd)
    position = _int(request, "position")
    if lender not in roster.participants:
        raise SecAggError(f"the roster does not name this lender ({lender})")
    if roster.participants.index(lender) != position:
        raise SecAggError(
            f"the roster places lender {lender} at position {roster.participants.index(lender)}, "
            f"not at position {position} as the request says"
        )
    me = SecAggLender(position, roster.size, roster.threshold)
    body = keys_body(run_id, rnd, lender, position, me.public_key, me.channel_public_key)
    signature = sign(identity_key, canonical(body))
    context.state[STATE] = ConfigRecord(
        {
            "run": run_id,
            "round": rnd,
            "lender": lender,
            "roster": request["roster"],
            "roster-signature": request["roster-signature"],
            "participants": list(roster.participants),
            **me.to_state(),
        }
    )
    return ConfigRecord(
        {"mask-key": me.public_key, "channel-key": me.channel_public_key, "signature": bytes.fromhex(signature)}
    )


def share(
    context: Context, rnd: int, run_id: str, lender: int, registry: Registry | None, request: ConfigRecord
) -> ConfigRecord:
    """Step 2: every participant's keys, each checked against its registered identity key; reply with this
    lender's shares sealed for each other participant that advertised keys."""
    registry = _registry(registry)
    state = _state(context, rnd, run_id, lender, request, "shares")
    me, roster = SecAggLender.from_state(state), _roster(state)
    keys = [
        _bytes_list(request, "mask-keys"),
        _bytes_list(request, "channel-keys"),
        _bytes_list(request, "key-signatures"),
    ]
    if any(len(column) != roster.size for column in keys):
        raise SecAggError(f"expected keys and signatures for the roster's {roster.size} lenders")
    mask_keys, channel_keys, signatures = keys
    if mask_keys[me.index] != me.public_key or channel_keys[me.index] != me.channel_public_key:
        raise SecAggError("the coordinator sent back other keys for this lender than it advertised")
    advertised = [p for p in range(roster.size) if mask_keys[p] or channel_keys[p] or signatures[p]]
    for p in advertised:
        check_keys(
            registry,
            run_id,
            rnd,
            roster.participants[p],
            p,
            bytes(mask_keys[p]),
            bytes(channel_keys[p]),
            bytes(signatures[p]),
        )
    if len(advertised) < roster.threshold:
        raise SecAggError(f"{len(advertised)} lenders advertised keys; at least {roster.threshold} are needed")
    for column, what in ((mask_keys, "mask"), (channel_keys, "channel")):
        present = [column[p] for p in advertised]
        if len(set(present)) != len(present):
            raise SecAggError(f"two lenders advertise the same {what} key")
    channels = {p: bytes(channel_keys[p]) for p in advertised if p != me.index}
    sealed, own = me.sealed_shares(channels, aead_context(run_id, rnd))
    state["mask-keys"], state["channel-keys"], state["own-shares"] = mask_keys, channel_keys, own
    state["advertised"] = advertised
    context.state[STATE] = state
    return ConfigRecord({"sealed": [sealed.get(p, b"") for p in range(roster.size)]})


def masked_update(
    context: Context,
    rnd: int,
    run_id: str,
    lender: int,
    request: ConfigRecord,
    update: dict[str, np.ndarray],
    bound: float,
    records: int,
) -> np.ndarray:
    """Step 3: keep the shares sealed for this lender, and mask [n_i * clip(update, B), n_i] (uint64).

    `update` is the (DP-SGD trained) model minus the global model, `bound` B the max-update-norm, `records` n_i
    this lender's own training-record count (the one it signs in its manifest). The lender clips its update
    itself (the coordinator cannot screen a masked one) and weights it by n_i itself (a coordinator-chosen
    weight could single one lender out). Once a round: the same masks over a second update would reveal the
    difference of the two.
    """
    if isinstance(records, bool) or not isinstance(records, (int, np.integer)) or not 1 <= records <= MAX_WEIGHT:
        raise SecAggError(
            f"this lender's training-record count must be a whole number from 1 to MAX_WEIGHT "
            f"({MAX_WEIGHT}), got {records}"
        )
    if not (np.isfinite(bound) and bound > 0):
        raise SecAggError(f"secure aggregation needs a positive max-update-norm, got {bound}")
    state, me, roster, active = _train_state(context, rnd, run_id, lender, request)
    vector = flatten(update)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm):
        raise SecAggError("the update holds NaN or infinite values; nothing is sent")
    if norm > bound:
        vector = vector * (bound / norm)
    weighted = np.append(int(records) * vector, float(records))
    return _mask(context, state, me, active, request, weighted_quantizer(bound, roster.size).encode(weighted))


def _train_state(
    context: Context, rnd: int, run_id: str, lender: int, request: ConfigRecord
) -> tuple[ConfigRecord, SecAggLender, Roster, list[int]]:
    """Step 3's checks, common to both modes: this round's state, once masked at most, and the lenders that
    shared (at least t, this lender among them, each with shares sealed for it)."""
    state = _state(context, rnd, run_id, lender, request, "train")
    me, roster = SecAggLender.from_state(state), _roster(state)
    if "masked" in state:
        raise SecAggError(
            "this lender already sent its masked update this round: the same masks on another "
            "update would reveal the difference"
        )
    if "advertised" not in state:
        raise SecAggError("the shares step did not happen on this lender this round")
    active, sealed = _ints(request, "active"), _bytes_list(request, "sealed")
    advertised = set(_ints(state, "advertised"))
    if len(set(active)) != len(active) or not set(active) <= advertised:
        raise SecAggError(
            "the lenders said to have shared include one that advertised no keys to this lender, or one twice"
        )
    if me.index not in active or len(active) < roster.threshold:
        raise SecAggError(
            f"{len(active)} lenders shared keys; at least {roster.threshold} are needed (or this lender is not one)"
        )
    if len(sealed) != roster.size or any(not sealed[p] for p in active if p != me.index):
        raise SecAggError("the train request lacks the shares some lender that shared sealed for this lender")
    return state, me, roster, active


def _mask(
    context: Context, state: ConfigRecord, me: SecAggLender, active: list[int], request: ConfigRecord, encoded
) -> np.ndarray:
    """Mask the encoded vector against the lenders that shared, and remember that this round is masked."""
    mask_keys = _bytes_list(state, "mask-keys")
    masked = me.masked(encoded, {p: bytes(mask_keys[p]) for p in active})
    state["sealed-in"], state["active"], state["masked"] = _bytes_list(request, "sealed"), active, True
    context.state[STATE] = state
    return masked


def signed_roster(context: Context, rnd: int, run_id: str, lender: int, request: ConfigRecord) -> Roster:
    """The roster this lender checked in step 1 (signed by the coordinator; threshold t at most its size k): no
    sum holding this lender's vector is unmasked with fewer than t survivors, because this lender reveals only
    after t survivors signed one survivor set (`reveal`)."""
    _, _, roster, _ = _train_state(context, rnd, run_id, lender, request)
    return roster


def masked_sum(
    context: Context, rnd: int, run_id: str, lender: int, request: ConfigRecord, values: np.ndarray
) -> np.ndarray:
    """Step 3, plain-sum mode (gbdt leaf sums): mask `values` as they are, no weight, no count coordinate; the
    coordinator learns only the sum over the survivors. Each value is clipped to +-SUM_BOUND by the lender before
    encoding (federation/secagg.py, sum_quantizer): `values` already carry the lender's noise, so the clipping is
    post-processing of its DP release and costs no privacy."""
    state, me, roster, active = _train_state(context, rnd, run_id, lender, request)
    values = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise SecAggError("the leaf sums hold NaN or infinite values; nothing is sent")
    return _mask(context, state, me, active, request, sum_quantizer(roster.size).encode(values))


def _unmasking(
    state: ConfigRecord, registry: Registry, run_id: str, rnd: int, lender: int, request: ConfigRecord
) -> tuple[list[int], list[int]]:
    """The signed unmasking request's (survivors, dropped), checked against what this lender saw in step 3."""
    if "active" not in state:
        raise SecAggError("this lender sent no masked update this round: there is nothing to unmask")
    roster = _roster(state)
    survivors, dropped = check_unmask(request["unmask"], request["unmask-signature"], registry, run_id, rnd, roster)
    shared = {roster.participants[p] for p in _ints(state, "active")}
    if set(survivors) | set(dropped) != shared:
        raise SecAggError("the unmasking request does not split the lenders that shared into survivors and dropped")
    if lender not in survivors:
        raise SecAggError(f"the unmasking request does not count this lender ({lender}) among the survivors")
    return survivors, dropped


def confirm(
    context: Context,
    rnd: int,
    run_id: str,
    lender: int,
    identity_key: Ed25519PrivateKey,
    registry: Registry | None,
    request: ConfigRecord,
) -> ConfigRecord:
    """Step 4 (the consistency round): check the coordinator's signed unmasking request and sign its survivor
    set; the same set again gets the same signature, another set none."""
    registry = _registry(registry)
    state = _state(context, rnd, run_id, lender, request, "confirm")
    survivors, dropped = _unmasking(state, registry, run_id, rnd, lender, request)
    if "confirmed" in state and state["confirmed"] != request["unmask"]:
        raise SecAggError("this lender already confirmed another survivor set this round")
    state["confirmed"] = request["unmask"]
    context.state[STATE] = state
    signature = sign(identity_key, canonical(survivors_body(run_id, rnd, survivors, dropped)))
    return ConfigRecord({"signature": bytes.fromhex(signature)})


def reveal(
    context: Context, rnd: int, run_id: str, lender: int, registry: Registry | None, request: ConfigRecord
) -> ConfigRecord:
    """Step 5: once at least t survivors signed the survivor set this lender confirmed, the shares that remove
    the survivors' self masks and the dropped lenders' pairwise masks."""
    registry = _registry(registry)
    state = _state(context, rnd, run_id, lender, request, "unmask")
    if bool(state.get("revealed", False)):
        raise SecAggError("this lender already answered the unmasking step of this round")
    survivors, dropped = _unmasking(state, registry, run_id, rnd, lender, request)
    if state.get("confirmed") != request["unmask"]:
        raise SecAggError("this lender did not confirm this survivor set: it reveals only for the set it signed")
    roster, confirmations = _roster(state), _bytes_list(request, "confirmations")
    signed_by = count_confirmations(registry, run_id, rnd, survivors, dropped, [bytes(c) for c in confirmations])
    if signed_by < roster.threshold:
        raise SecAggError(
            f"only {signed_by} survivors signed this survivor set; {roster.threshold} are needed "
            f"before this lender reveals"
        )
    me = SecAggLender.from_state(state)
    state["revealed"] = True
    context.state[STATE] = state
    sealed_in, channel_keys = _bytes_list(state, "sealed-in"), _bytes_list(state, "channel-keys")
    context_bytes = aead_context(run_id, rnd)

    def shares_of(other: int) -> dict[str, tuple[int, bytes, bytes]]:
        p = roster.participants.index(other)
        if p == me.index:
            return split_shares(_bytes(state, "own-shares"))
        return me.open_shares(p, bytes(sealed_in[p]), bytes(channel_keys[p]), context_bytes)

    return ConfigRecord(
        {
            "seed-shares": [pack_share(shares_of(j)["self_seed"]) for j in survivors],
            "key-shares": [pack_share(shares_of(j)["private_key"]) for j in dropped],
        }
    )
