"""Screening of training replies before anything is aggregated.

A reply is left out, with the reason, when the lender reports an error, its arrays break the contract (shape, NaN,
inf; or no arrays at all, where its training failed after it counted the release), its update is farther than
max-update-norm from the global model (an absurd update is not a model), or it never came. What can still be read
from a rejected reply is kept (`salvaged`): a lender whose update is rejected may still have spent privacy budget,
and that release must be accounted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flwr.app import ArrayRecord, Message

from federation.audit_trail import ledger as L
from federation.audit_trail.attest import sent_nothing
from federation.config import RunConfig
from federation.messages import ReplyRejected, inspect_reply, numpy_arrays, salvage_train_reply
from federation.privacy.lender_level_mechanism import update_norm

# (lender, why it is left out, what could be read from its reply or None)
Rejection = tuple[int, str, dict | None]
# a usable reply and its inspected plain content
Checked = tuple[Message, dict]


def screen_train_replies(
    replies: list[Message],
    shapes: Mapping[str, tuple[int, ...]],
    global_arrays: ArrayRecord,
    cfg: RunConfig,
    lender_of: Callable[[Message], int],
) -> tuple[list[Checked], list[Rejection]]:
    """Split training replies into usable ones (in lender order) and rejected ones (lender, reason, salvaged)."""
    global_np = numpy_arrays(global_arrays)
    checked: list[Checked] = []
    rejected: list[Rejection] = []
    for msg in replies:
        lender = lender_of(msg)
        try:
            plain = inspect_reply(msg, shapes)
        except ReplyRejected as exc:
            salvaged = salvage_train_reply(msg)
            rejected.append((lender, _failed_release_reason(salvaged) or str(exc), salvaged))
            continue
        # A masked update (secure aggregation) is screened by its lender: the coordinator cannot see it; a gbdt
        # reply holds leaf sums, not a model (its leaf values are clipped instead).
        if "arrays" in plain and cfg.max_update_norm and not cfg.secure_aggregation and cfg.model != "gbdt":
            norm = update_norm(plain["arrays"], global_np)
            if not norm <= cfg.max_update_norm:
                rejected.append(
                    (lender, f"update norm {norm:.3g} exceeds max-update-norm {cfg.max_update_norm:g}", plain)
                )
                continue
        checked.append((msg, plain))
    return sorted(checked, key=lambda item: lender_of(item[0])), rejected


def _failed_release_reason(salvaged: dict | None) -> str:
    """The reason for an update that holds nothing: the lender's training failed after it counted the release
    (clients/dp_round.py `_failed_release`); "" for any other reply. The signed body is checked when it is recorded."""
    body = ((salvaged or {}).get("attestation") or {}).get("body") or {}
    if body.get("type") == L.LENDER_UPDATE and sent_nothing(body) and not (salvaged or {}).get("arrays"):
        return f"the lender's training failed after it counted release {body.get('release')}: it sent no update"
    return ""


def unanswered(
    asked: set[int], checked: list[Checked], rejected: list[Rejection], lender_of: Callable[[Message], int]
) -> list[Rejection]:
    """The lenders asked to train that sent nothing back: they failed or timed out, and released nothing."""
    answered = {lender_of(msg) for msg, _ in checked} | {lender for lender, _, _ in rejected}
    return [(lender, "no reply (the lender failed or timed out)", None) for lender in sorted(asked - answered)]
