"""Who takes part: one SuperNode per lender, and each lender's signed manifest (its id, features, dataset card).

The server never imports the data loaders: it learns the feature list from the lenders' manifests.
"""

from __future__ import annotations

import time

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid

from federation.config import RunConfig
from federation.messages import CONFIG, QUERY_MANIFEST, run_config_record
from server.errors import RunFailed
from server.messaging import ask, inspect_all

# node id -> (lender id, its manifest, its signed attestation of the manifest)
Enrolment = dict[int, tuple[int, dict, dict | None]]


def fixed_size(grid: Grid) -> bool:
    """Whether every SuperNode of the federation is there from the start: Flower's simulation runtime (what
    `flwr run .` starts locally) registers its `num-supernodes` nodes once, as the ServerApp starts; on the
    deployment runtime SuperNodes connect whenever their operators start them."""
    return isinstance(grid, InMemoryGrid)


def wait_for_nodes(grid: Grid, count: int, timeout: float = 120.0, settle: float = 1.0) -> list[int]:
    """One SuperNode per lender: wait for `count` of them, and refuse a federation of another size. A federation of
    fixed size that holds too few fails as soon as its node count has not changed for `settle` seconds (the nodes
    are registered in a loop beside the ServerApp's start), not after `timeout`: no SuperNode will join it. On the
    deployment runtime, a wait longer than `settle` says how many are connected, each time that changes."""
    start = time.time()
    fixed = fixed_size(grid)
    seen, since, said = -1, start, -1
    while len(nodes := sorted(grid.get_node_ids())) < count:
        now = time.time()
        if len(nodes) != seen:
            seen, since = len(nodes), now
        if fixed and nodes and now - since >= settle:
            raise RunFailed(
                f"the federation has {len(nodes)} SuperNode(s) but the run has {count} lenders (one SuperNode per "
                f"lender): run with lenders={len(nodes)} (--run-config 'lenders={len(nodes)}') or with "
                f"{count} SuperNodes (--federation-config 'num-supernodes={count}')"
            )
        if not fixed and now - start >= settle and len(nodes) != said:  # the ServerApp's output: flwr run --stream
            print(f"waiting for {count} SuperNodes, one per lender: {len(nodes)} connected", flush=True)
            said = len(nodes)
        if now > start + timeout:
            raise RunFailed(
                f"only {len(nodes)} SuperNode(s) connected within {timeout:.0f} s, but the run has {count} lenders: "
                f"set lenders={len(nodes)} (flwr run . --run-config 'lenders={len(nodes)}') or start {count} SuperNodes"
            )
        time.sleep(0.2)
    if len(nodes) > count:
        raise RunFailed(
            f"{len(nodes)} SuperNodes are connected but the run has {count} lenders: set lenders={len(nodes)}"
        )
    return nodes


def collect_manifests(grid: Grid, cfg: RunConfig, nodes: list[int]) -> Enrolment:
    """Ask every lender for its manifest. Returns node id -> (lender id, manifest, signed attestation)."""
    content = RecordDict({CONFIG: run_config_record(cfg)})
    replies = ask(grid, [Message(content, dst_node_id=node, message_type=QUERY_MANIFEST) for node in nodes])
    if len(replies) != len(nodes):
        raise RunFailed(f"{len(nodes) - len(replies)} lender(s) did not send a manifest")
    out: Enrolment = {}
    for msg, plain in inspect_all(replies):
        manifest = plain["manifest"]
        out[msg.metadata.src_node_id] = (manifest["lender"], manifest, plain["attestation"])
    lenders = sorted(lender for lender, _, _ in out.values())
    if lenders != list(range(cfg.lenders)):
        raise RunFailed(f"lenders reported ids {lenders}; expected 0..{cfg.lenders - 1}")
    described = {"features": "encoded feature list", "card_sha256": "dataset card", "encoding": "encoding"}
    for what, words in described.items():  # one model needs one encoding (the verifier checks it again)
        if len({str(m[what]) for _, m, _ in out.values()}) != 1:
            raise RunFailed(f"lenders disagree on their {words}; they must use the same dataset card")
    return out
