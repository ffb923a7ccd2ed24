"""The coordinator's side of a secure-aggregation round (Bonawitz et al., CCS 2017, "Practical Secure
Aggregation for Privacy-Preserving Machine Learning", with the signed messages and the consistency round of its
actively secure variant; the protocol and its threat model are in federation/secagg.py, the lender's side is
clients/secagg.py).

Around the training message it signs the round's roster and routes, never reading: (1) each lender's two
public keys and their signature, (2) the Shamir shares each lender seals for each other lender, then (3) sends
the train message with the shares sealed for that lender, (4) signs the unmasking request (survivors, dropped)
and collects each survivor's signature on that survivor set, and (5) forwards those signatures with the request
and gets the shares that remove the masks. It learns sum(n_i * u_i) and sum(n_i) over the survivors, nothing
about any one of them, and divides: the FedAvg weights are the lenders' own record counts, not its choice.
Lenders lost at any step are left out (`dropped`, with the reason); below the threshold the round's aggregate
fails with SecAggError and the model stays as it was. What it signed (`roster`, `unmask_request`) and the
survivors' `confirmations` are kept for the ledger.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation.messages import (
    CONFIG,
    MASKED,
    QUERY_SECAGG_CONFIRM,
    QUERY_SECAGG_KEYS,
    QUERY_SECAGG_SHARES,
    QUERY_SECAGG_UNMASK,
    SECAGG,
    ReplyRejected,
    inspect_reply,
    numpy_arrays,
)
from federation.registry import Registry
from federation.secagg import (
    MIN_ROSTER,
    SecAggError,
    check_keys,
    confirmation_verifies,
    default_threshold,
    roster_body,
    signed,
    sum_quantizer,
    unflatten,
    unmask_body,
    unmask_sum,
    unpack_share,
    weighted_quantizer,
)
from server.messaging import send_and_receive

TIMEOUT_S = 3600.0


class SecureRound:
    """One round's secure aggregation, from the coordinator's side: `prepare` before the training messages go
    out, `aggregate` with the replies that passed screening.

    `registry`, when the coordinator has one, lets it leave out early a lender whose keys or confirmation do not
    verify (every honest lender would refuse the round over it); the lenders check everything themselves anyway.
    """

    def __init__(
        self,
        grid: Grid,
        rnd: int,
        config: ConfigRecord,
        bound: float,
        lender_of_node: Callable[[int], int],
        run_id: str,
        coordinator_key: Ed25519PrivateKey,
        registry: Registry | None = None,
    ) -> None:
        self.grid, self.rnd, self.config, self.bound = grid, rnd, config, bound
        self.lender_of_node, self.run_id, self.key, self.registry = lender_of_node, run_id, coordinator_key, registry
        self.nodes: list[int] = []  # position -> node id
        self.participants: list[int] = []  # position -> lender id
        self.threshold = 0
        self.roster: dict[str, str] = {}  # {"body": canonical JSON, "signature": hex}, for the ledger
        self.unmask_request: dict[str, str] = {}  # the same, for the unmasking request
        self.confirmations: dict[int, str] = {}  # survivor lender -> its signature (hex) on the survivor set
        self.mask_keys: dict[int, bytes] = {}
        self.active: list[int] = []  # positions that shared their keys: everyone masks against these
        self.dropped: dict[int, str] = {}  # lender -> why its update is not in the aggregate
        self.unhelpful: dict[int, str] = {}  # survivor -> why it did not help unmask (its update is in the sum)

    def _roster_fields(self) -> dict:
        return {"roster": self.roster["body"], "roster-signature": self.roster["signature"]}

    def _ask(self, kind: str, requests: dict[int, dict], lost: dict[int, str] | None = None) -> dict[int, dict]:
        """Send one secure-aggregation request per position; the inspected replies by position. A lender
        that fails or breaks the contract is recorded in `lost` (default `dropped`) with the reason, and the
        round goes on without it."""
        messages = [
            Message(
                RecordDict({CONFIG: self.config, SECAGG: ConfigRecord(body)}),
                dst_node_id=self.nodes[p],
                message_type=kind,
            )
            for p, body in requests.items()
        ]
        position = {node: p for p, node in enumerate(self.nodes)}
        out, why = {}, {}
        for reply in send_and_receive(self.grid, messages, TIMEOUT_S):
            p = position[reply.metadata.src_node_id]
            try:
                out[p] = inspect_reply(reply)["secagg"]
            except ReplyRejected as exc:
                why[p] = f"secure aggregation ({kind}): {exc}"
        for p in sorted(requests.keys() - out.keys()):
            self._drop(p, why.get(p, f"no reply to {kind}"), lost)
        return out

    def _drop(self, position: int, why: str, lost: dict[int, str] | None = None) -> None:
        (self.dropped if lost is None else lost).setdefault(self.participants[position], why)

    def prepare(self, messages: list[Message]) -> list[Message]:
        """The signed roster, steps 1 and 2, then the training messages for the lenders that shared (the others
        are in `dropped`)."""
        messages = sorted(messages, key=lambda m: self.lender_of_node(m.metadata.dst_node_id))
        self.nodes = [m.metadata.dst_node_id for m in messages]
        self.participants = [self.lender_of_node(node) for node in self.nodes]
        k = len(self.nodes)
        if k < MIN_ROSTER:
            raise SecAggError(f"round {self.rnd}: secure aggregation needs at least {MIN_ROSTER} lenders, {k} sampled")
        self.threshold = default_threshold(k)
        self.roster = signed(self.key, roster_body(self.run_id, self.rnd, self.participants, self.threshold))
        keys = self._ask(QUERY_SECAGG_KEYS, {p: {**self._roster_fields(), "position": p} for p in range(k)})
        for p in sorted(keys):
            if not self._keys_verify(p, keys[p]):
                self._drop(p, "secure aggregation: its keys are not signed by its registered key")
                del keys[p]
        self._enough(len(keys), "advertised keys")
        self.mask_keys = {p: bytes(keys[p]["mask-key"]) for p in keys}
        column = {
            name: [bytes(keys[p][name]) if p in keys else b"" for p in range(k)]
            for name in ("mask-key", "channel-key", "signature")
        }
        request = {
            **self._roster_fields(),
            "mask-keys": column["mask-key"],
            "channel-keys": column["channel-key"],
            "key-signatures": column["signature"],
        }
        sealed = self._ask(QUERY_SECAGG_SHARES, {p: request for p in sorted(keys)})
        self.active = sorted(p for p in sealed if len(sealed[p]["sealed"]) == k)
        for p in sorted(set(sealed) - set(self.active)):
            self._drop(p, f"secure aggregation: sealed shares for {len(sealed[p]['sealed'])} lenders, not {k}")
        self._enough(len(self.active), "shared their keys")
        out = []
        for p in self.active:
            # A new content per lender: Flower's strategies give every train message the same RecordDict.
            content = RecordDict(
                {
                    **dict(messages[p].content),
                    SECAGG: ConfigRecord(
                        {
                            **self._roster_fields(),
                            "active": self.active,
                            "sealed": [bytes(sealed[j]["sealed"][p]) if j in self.active else b"" for j in range(k)],
                        }
                    ),
                }
            )
            out.append(
                Message(
                    content,
                    dst_node_id=self.nodes[p],
                    message_type=messages[p].metadata.message_type,
                    group_id=messages[p].metadata.group_id,
                )
            )
        return out

    def _keys_verify(self, p: int, reply: dict) -> bool:
        if self.registry is None:
            return True
        try:
            check_keys(
                self.registry,
                self.run_id,
                self.rnd,
                self.participants[p],
                p,
                bytes(reply["mask-key"]),
                bytes(reply["channel-key"]),
                bytes(reply["signature"]),
            )
        except SecAggError:
            return False
        return True

    def _enough(self, count: int, what: str) -> None:
        if count < self.threshold:
            raise SecAggError(
                f"round {self.rnd}: only {count} lenders {what}; secure aggregation needs at least "
                f"{self.threshold} of {len(self.nodes)}"
            )

    def aggregate(self, global_arrays: ArrayRecord, accepted: list[Message]) -> tuple[ArrayRecord, int]:
        """Steps 4 and 5 and the unmasked FedAvg update: (the new model, sum of the survivors' record counts).

        `accepted`: the training replies the coordinator screened and kept; every other active lender counts as
        dropped (its pairwise masks are removed, its update never is)."""
        current = numpy_arrays(global_arrays)
        length = sum(array.size for array in current.values()) + 1  # the update, then the record count
        total, survivors = self._unmasked(accepted, length)
        update, weight_sum = self._decode(total, current, survivors)
        new = ArrayRecord(
            {
                name: Array((current[name].astype(np.float64) + update[name]).astype(current[name].dtype))
                for name in global_arrays
            }
        )
        return new, weight_sum

    def aggregate_sum(self, accepted: list[Message], length: int) -> np.ndarray:
        """Steps 4 and 5 in plain-sum mode (gbdt leaf sums): the survivors' `length` values summed, no weights
        and no division (federation/secagg.py, sum_quantizer; the lenders encode with the same)."""
        total, _ = self._unmasked(accepted, length)
        return sum_quantizer(len(self.nodes)).decode_sum(total)

    def _unmasked(self, accepted: list[Message], length: int) -> tuple[np.ndarray, int]:
        """The unmasked (still encoded) sum of the survivors' vectors, and how many survivors it holds."""
        masked = self._masked_vectors(accepted, length)
        survivors = sorted(masked)
        dropped = sorted(set(self.active) - set(survivors))
        self._enough(len(survivors), "sent their masked update")
        answers = self._unmasking_shares(survivors, dropped)
        seed_shares = {
            s: [unpack_share(bytes(a["seed-shares"][i])) for a in answers.values()] for i, s in enumerate(survivors)
        }
        key_shares = {
            d: [unpack_share(bytes(a["key-shares"][i])) for a in answers.values()] for i, d in enumerate(dropped)
        }
        masks = {p: self.mask_keys[p] for p in self.active}
        return unmask_sum(masked, masks, self.threshold, seed_shares, key_shares), len(survivors)

    def _masked_vectors(self, accepted: list[Message], length: int) -> dict[int, np.ndarray]:
        """The masked vector of each active lender whose reply holds one of the right kind, by position."""
        position = {node: p for p, node in enumerate(self.nodes)}
        masked = {}
        for msg in accepted:
            p = position[msg.metadata.src_node_id]
            vector = numpy_arrays(msg.content.array_records["arrays"]).get(MASKED)
            if p not in self.active or vector is None or vector.dtype != np.uint64 or vector.shape != (length,):
                self._drop(p, f"secure aggregation: the training reply holds no masked uint64 vector of {length}")
                continue
            masked[p] = vector
        return masked

    def _unmasking_shares(self, survivors: list[int], dropped: list[int]) -> dict[int, dict]:
        """Step 4, the signed survivor set and each survivor's confirmation of it, then step 5: the answers (by
        position) that hold a seed share for every survivor and a key share for every dropped lender."""
        survivor_ids, dropped_ids = [self.participants[p] for p in survivors], [self.participants[p] for p in dropped]
        self.unmask_request = signed(self.key, unmask_body(self.run_id, self.rnd, survivor_ids, dropped_ids))
        request = {
            **self._roster_fields(),
            "unmask": self.unmask_request["body"],
            "unmask-signature": self.unmask_request["signature"],
        }
        confirmed = self._ask(QUERY_SECAGG_CONFIRM, {p: request for p in survivors}, self.unhelpful)
        for p in sorted(confirmed):
            lender, signature = self.participants[p], bytes(confirmed[p]["signature"])
            if self.registry and not confirmation_verifies(
                self.registry, self.run_id, self.rnd, survivor_ids, dropped_ids, lender, signature
            ):
                self._drop(
                    p, "secure aggregation: its confirmation of the survivor set does not verify", self.unhelpful
                )
                continue
            self.confirmations[lender] = signature.hex()
        self._enough(len(self.confirmations), "confirmed the survivor set")
        forwarded = [bytes.fromhex(self.confirmations.get(lender, "")) for lender in survivor_ids]
        answers = self._ask(
            QUERY_SECAGG_UNMASK,
            {
                p: {**request, "confirmations": forwarded}
                for p in survivors
                if self.participants[p] in self.confirmations
            },
            self.unhelpful,
        )
        answers = {
            p: a
            for p, a in answers.items()
            if len(a["seed-shares"]) == len(survivors) and len(a["key-shares"]) == len(dropped)
        }
        self._enough(len(answers), "answered the unmasking step")
        return answers

    def _decode(
        self, total: np.ndarray, current: dict[str, np.ndarray], survivors: int
    ) -> tuple[dict[str, np.ndarray], int]:
        """The mean update by array name and the survivors' record count, from the unmasked quantized sum."""
        quantizer = weighted_quantizer(self.bound, len(self.nodes))
        decoded = quantizer.decode_sum(total)
        weight_sum = round(float(decoded[-1]))
        # n_i are whole numbers: a sum that is not one means some vector was malformed (or a share was wrong).
        if weight_sum < 1 or abs(decoded[-1] - weight_sum) > quantizer.max_sum_error(survivors):
            raise SecAggError(
                f"round {self.rnd}: the unmasked record count {decoded[-1]:.6f} is not a positive whole "
                f"number: a lender sent a malformed masked vector"
            )
        return unflatten(decoded[:-1] / weight_sum, current), weight_sum
