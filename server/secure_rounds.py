"""The coordinator's side of a secure-aggregation round (Bonawitz et al., CCS 2017, "Practical Secure
Aggregation for Privacy-Preserving Machine Learning", semi-honest version; the lender's side is
federation/secagg_lender.py).

Around the training message it routes, and never reads: (1) each lender's two public keys,
(2) the Shamir shares each lender seals for each other lender, then (3) sends the train message with
the shares sealed for that lender, and (4) asks the survivors for the shares that remove the masks.
It learns the sum of the survivors' weighted updates and nothing about any one of them, as long as
fewer than the threshold t (more than half the round's lenders) collude with it. Lenders lost at any
step are left out; below t the round's aggregate fails with SecAggError and the model stays as it was.
The FedAvg weights are the lenders' training-record counts from their manifests (public to the
coordinator already): lender i masks (n_i / n) * (its model - global), n over the lenders that shared.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation.messages import (CONFIG, MASKED, QUERY_SECAGG_KEYS, QUERY_SECAGG_SHARES, QUERY_SECAGG_UNMASK, SECAGG,
                                 ReplyRejected, inspect_reply, numpy_arrays)
from federation.secagg import MODULUS, Quantizer, SecAggError, unmask_sum, unpack_share
from federation.secagg_lender import unflatten

TIMEOUT_S = 3600.0


class SecureRound:
    """One round's secure aggregation, from the coordinator's side: `prepare` before the training
    messages go out, `aggregate` with the replies that passed screening."""

    def __init__(self, grid: Grid, rnd: int, config: ConfigRecord, bound: float, lender_of_node: Callable[[int], int],
                 train_records: dict[int, int]) -> None:
        self.grid, self.rnd, self.config, self.bound = grid, rnd, config, bound
        self.lender_of_node, self.train_records = lender_of_node, train_records
        self.nodes: list[int] = []  # position -> node id
        self.threshold = 0
        self.mask_keys: dict[int, bytes] = {}
        self.active: list[int] = []  # positions that shared their keys: everyone masks against these
        self.dropped: dict[int, str] = {}  # lender -> why it was left out of a step

    def _ask(self, kind: str, requests: dict[int, dict]) -> dict[int, dict]:
        """Send one secure-aggregation request per position; the inspected replies by position. A lender
        that fails or breaks the contract is recorded as dropped, and the round goes on without it."""
        messages = [Message(RecordDict({CONFIG: self.config, SECAGG: ConfigRecord(body)}), dst_node_id=self.nodes[p],
                            message_type=kind) for p, body in requests.items()]
        position = {node: p for p, node in enumerate(self.nodes)}
        out, why = {}, {}
        for reply in self.grid.send_and_receive(messages, timeout=TIMEOUT_S):
            p = position[reply.metadata.src_node_id]
            try:
                out[p] = inspect_reply(reply)["secagg"]
            except ReplyRejected as exc:
                why[p] = f"secure aggregation ({kind}): {exc}"
        for p in sorted(requests.keys() - out.keys()):
            self.dropped.setdefault(self.lender_of_node(self.nodes[p]), why.get(p, f"no reply to {kind}"))
        return out

    def prepare(self, messages: list[Message]) -> list[Message]:
        """Steps 1 and 2, then the training messages for the lenders that shared (others are in `dropped`)."""
        messages = sorted(messages, key=lambda m: self.lender_of_node(m.metadata.dst_node_id))
        self.nodes = [m.metadata.dst_node_id for m in messages]
        k = len(self.nodes)
        self.threshold = k // 2 + 1
        if k < 2:
            raise SecAggError(f"round {self.rnd}: secure aggregation needs at least 2 lenders, {k} sampled")
        keys = self._ask(QUERY_SECAGG_KEYS, {p: {"position": p, "participants": k, "threshold": self.threshold}
                                             for p in range(k)})
        self._enough(len(keys), "advertised keys")
        self.mask_keys = {p: bytes(keys[p]["mask-key"]) for p in keys}
        channel = [bytes(keys[p]["channel-key"]) if p in keys else b"" for p in range(k)]
        mask = [self.mask_keys.get(p, b"") for p in range(k)]
        sealed = self._ask(QUERY_SECAGG_SHARES, {p: {"mask-keys": mask, "channel-keys": channel} for p in sorted(keys)})
        self.active = sorted(p for p in sealed if len(sealed[p]["sealed"]) == k)
        for p in sorted(set(sealed) - set(self.active)):
            self.dropped[self.lender_of_node(self.nodes[p])] = f"secure aggregation: sealed shares for {len(sealed[p]['sealed'])} lenders, not {k}"
        self._enough(len(self.active), "shared their keys")
        records = sum(self.train_records[self.lender_of_node(self.nodes[p])] for p in self.active)
        out = []
        for p in self.active:
            # A new content per lender: Flower's strategies give every train message the same RecordDict.
            content = RecordDict({**dict(messages[p].content), SECAGG: ConfigRecord({
                "sealed": [bytes(sealed[j]["sealed"][p]) if j in self.active else b"" for j in range(k)],
                "active": self.active, "weight": self.train_records[self.lender_of_node(self.nodes[p])] / records,
            })})
            out.append(Message(content, dst_node_id=self.nodes[p], message_type=messages[p].metadata.message_type,
                               group_id=messages[p].metadata.group_id))
        return out

    def _enough(self, count: int, what: str) -> None:
        if count < self.threshold:
            raise SecAggError(f"round {self.rnd}: only {count} lenders {what}; secure aggregation needs at least "
                              f"{self.threshold} of {len(self.nodes)}")

    def aggregate(self, global_arrays: ArrayRecord, accepted: list[Message]) -> ArrayRecord:
        """Step 4 and the unmasked FedAvg update. `accepted`: the training replies the coordinator screened
        and kept; every other active lender counts as dropped (its pairwise masks are removed, its update
        never is)."""
        position = {node: p for p, node in enumerate(self.nodes)}
        masked = {}
        for msg in accepted:
            vector = numpy_arrays(msg.content["arrays"]).get(MASKED)
            if vector is None or vector.dtype != np.uint32:
                raise SecAggError(f"round {self.rnd}: a training reply holds no masked uint32 vector")
            masked[position[msg.metadata.src_node_id]] = vector.astype(np.uint64)
        survivors = sorted(masked)
        dropped = sorted(set(self.active) - set(survivors))
        self._enough(len(survivors), "sent their masked update")
        answers = self._ask(QUERY_SECAGG_UNMASK, {p: {"survivors": survivors, "dropped": dropped} for p in survivors})
        answers = {p: a for p, a in answers.items()
                   if len(a["seed-shares"]) == len(survivors) and len(a["key-shares"]) == len(dropped)}
        self._enough(len(answers), "answered the unmasking step")
        seed_shares = {s: [unpack_share(bytes(a["seed-shares"][i])) for a in answers.values()] for i, s in enumerate(survivors)}
        key_shares = {d: [unpack_share(bytes(a["key-shares"][i])) for a in answers.values()] for i, d in enumerate(dropped)}
        total = unmask_sum(masked, {p: self.mask_keys[p] for p in self.active}, self.threshold, seed_shares, key_shares)
        weighted_sum = Quantizer(self.bound, len(self.active)).decode_sum(total % MODULUS, len(survivors))
        records = {p: self.train_records[self.lender_of_node(self.nodes[p])] for p in self.active}
        # The lenders weighted by their share of the active records; renormalize to the survivors'.
        scale = sum(records.values()) / sum(records[p] for p in survivors)
        current = numpy_arrays(global_arrays)
        update = unflatten(scale * weighted_sum, current)
        return ArrayRecord({name: Array((current[name].astype(np.float64) + update[name]).astype(current[name].dtype))
                            for name in global_arrays.keys()})
