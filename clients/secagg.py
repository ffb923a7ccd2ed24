"""The lender's side of one secure-aggregation round (the coordinator's is server/secure_rounds.py).

Four messages a round, as in Bonawitz et al. 2017 (semi-honest version):
1. keys: make this round's secrets, advertise the two public keys;
2. shares: seal Shamir shares of the self-mask seed and mask key for every other lender;
3. train: keep the sealed shares addressed to this lender, train, and send the update only masked;
4. unmask: for each survivor its self-seed share, for each dropped lender its key share; never both
   for one lender, and only once a round.
The secrets live in the lender's Flower Context state between the messages and never leave it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context

from federation.secagg import Quantizer, SecAggError, SecAggLender, pack_share, split_shares

STATE = "fedcredit-secagg"


def aead_context(run_id: str, rnd: int) -> bytes:
    return f"fedcredit secagg {run_id} round {rnd}".encode()


def flatten(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """An update as one float64 vector, parameters in name order (the coordinator unflattens the same way)."""
    return np.concatenate([np.asarray(arrays[name], dtype=np.float64).ravel() for name in sorted(arrays)])


def unflatten(vector: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name in sorted(like):
        size = like[name].size
        out[name] = vector[start:start + size].reshape(like[name].shape)
        start += size
    return out


def _state(context: Context, rnd: int) -> ConfigRecord:
    state = context.state.get(STATE) if STATE in context.state else None
    if state is None or int(state["round"]) != rnd:
        raise SecAggError(f"no secure-aggregation state for round {rnd}: the keys step did not happen on this lender")
    return state


def advertise(context: Context, rnd: int, request: ConfigRecord) -> ConfigRecord:
    """Step 1: fresh secrets for this round; reply with the public mask and channel keys."""
    me = SecAggLender(int(request["position"]), int(request["participants"]), int(request["threshold"]))
    context.state[STATE] = ConfigRecord({"round": rnd, **me.to_state()})
    return ConfigRecord({"mask-key": me.public_key, "channel-key": me.channel_public_key})


def share(context: Context, rnd: int, run_id: str, request: ConfigRecord) -> ConfigRecord:
    """Step 2: everyone's public keys arrive; reply with shares sealed for each other lender."""
    state = _state(context, rnd)
    me = SecAggLender.from_state(state)
    mask_keys, channel_keys = list(request["mask-keys"]), list(request["channel-keys"])
    if len(mask_keys) != me.lenders or len(channel_keys) != me.lenders:
        raise SecAggError(f"expected keys for {me.lenders} lenders, got {len(mask_keys)}")
    if mask_keys[me.index] != me.public_key or channel_keys[me.index] != me.channel_public_key:
        raise SecAggError("the coordinator sent back other keys for this lender than it advertised")
    present = [k for k in mask_keys if k]
    if len(set(present)) != len(present):
        raise SecAggError("two lenders advertise the same mask key")
    channels = {j: key for j, key in enumerate(channel_keys) if key and j != me.index}
    sealed, own = me.sealed_shares(channels, aead_context(run_id, rnd))
    state["mask-keys"], state["channel-keys"], state["own-shares"] = mask_keys, channel_keys, own
    context.state[STATE] = state
    return ConfigRecord({"sealed": [sealed.get(j, b"") for j in range(me.lenders)]})


def masked_update(context: Context, rnd: int, request: ConfigRecord, update: dict[str, np.ndarray],
                  bound: float) -> np.ndarray:
    """Step 3: keep the shares sealed for this lender, and mask the weighted update.

    `update` is the (DP-SGD trained) model minus the global model. The lender scales it by its weight
    (its share of the round's records), clips it to L2 norm `bound` (the encoding's range: the
    coordinator cannot screen a masked update, so the lender bounds its own) and masks it against
    every lender that shared its keys this round.
    """
    state = _state(context, rnd)
    me = SecAggLender.from_state(state)
    active = [int(j) for j in request["active"]]
    if me.index not in active or len(active) < me.threshold:
        raise SecAggError(f"{len(active)} lenders shared keys; at least {me.threshold} are needed (or this lender is not one)")
    state["sealed-in"], state["active"] = list(request["sealed"]), active
    context.state[STATE] = state
    vector = float(request["weight"]) * flatten(update)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm):
        raise SecAggError("the update holds NaN or infinite values; nothing is sent")
    if norm > bound:
        vector *= bound / norm
    mask_keys = list(state["mask-keys"])
    encoded = Quantizer(bound, len(active)).encode(vector)
    return me.masked(encoded, {j: mask_keys[j] for j in active}).astype(np.uint32)


def reveal(context: Context, rnd: int, run_id: str, request: ConfigRecord) -> ConfigRecord:
    """Step 4: shares to remove the survivors' self masks and the dropped lenders' pairwise masks."""
    state = _state(context, rnd)
    me = SecAggLender.from_state(state)
    survivors, dropped = [int(j) for j in request["survivors"]], [int(j) for j in request["dropped"]]
    active = [int(j) for j in state["active"]] if "active" in state else []
    if bool(state.get("revealed", False)):
        raise SecAggError("this lender already answered the unmasking step of this round")
    if set(survivors) & set(dropped) or not set(survivors) | set(dropped) <= set(active):
        raise SecAggError("the coordinator asked for both masks of one lender, or for a lender outside the round")
    if me.index not in survivors or len(survivors) < me.threshold:
        raise SecAggError(f"{len(survivors)} survivors; at least {me.threshold} are needed to unmask")
    state["revealed"] = True
    context.state[STATE] = state
    sealed_in, channel_keys = list(state["sealed-in"]), list(state["channel-keys"])
    context_bytes = aead_context(run_id, rnd)

    def shares_of(j: int) -> dict:
        if j == me.index:
            return split_shares(bytes(state["own-shares"]))
        return me.open_shares(j, sealed_in[j], channel_keys[j], context_bytes)

    return ConfigRecord({"seed-shares": [pack_share(shares_of(j)["self_seed"]) for j in survivors],
                         "key-shares": [pack_share(shares_of(j)["private_key"]) for j in dropped]})
