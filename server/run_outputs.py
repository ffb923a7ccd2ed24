"""The end of a run: each lender's signed count of its releases, then the run folder's files.

The run folder is derived from the ledger (federation/audit_trail/derive.py), so the verifier can derive it again;
the coordinator's own summary (stop, final metrics, privacy) and the hashes of every file go into the ledger's
last entry.
"""

from __future__ import annotations

import hashlib
import logging

import torch
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from federation.audit_trail import checkpoint
from federation.audit_trail import ledger as L
from federation.audit_trail.derive import run_files
from federation.audit_trail.report import write_report
from federation.audit_trail.run_view import RunView, global_scores
from federation.config import RunConfig
from federation.messages import CONFIG, QUERY_FINAL, ReplyRejected, inspect_reply, run_config_record
from federation.metrics import METRICS
from federation.runfolder import RunFolder
from server.coordinator_strategy import CoordinatorStrategy
from server.errors import RunFailed
from server.ledger_keeper import AttestationRejected, LedgerKeeper
from server.messaging import ask
from server.run_record import RunRecord

log = logging.getLogger("fedcredit.server")


def collect_finals(grid: Grid, cfg: RunConfig, keeper: LedgerKeeper, record: RunRecord) -> None:
    """Each lender's own signed count of its releases: a release left out of the ledger cannot go unnoticed."""
    content = RecordDict({CONFIG: run_config_record(cfg)})
    nodes = sorted(grid.get_node_ids())
    replies = ask(grid, [Message(content, dst_node_id=n, message_type=QUERY_FINAL) for n in nodes])
    answered: set[int] = set()
    for reply in replies:
        try:
            plain = inspect_reply(reply)
        except ReplyRejected as exc:
            log.warning("a lender sent no final statement: %s", exc)
            continue
        lender = (plain["attestation"] or {}).get("body", {}).get("lender")
        if lender not in record.manifests or lender in answered:
            raise RunFailed(f"a final statement names lender {lender!r}")
        try:
            body = keeper.final(lender, plain["attestation"])
        except AttestationRejected as exc:
            raise RunFailed(str(exc)) from None
        distinct = len(record.releases.get(lender, []))
        if body["releases"] != distinct:
            raise RunFailed(
                f"lender {lender} counts {body['releases']} releases in this run; the coordinator recorded {distinct}"
            )
        answered.add(lender)
    for lender in sorted(set(record.manifests) - answered):
        keeper.rejected(None, lender, "no final statement (the lender failed or timed out)")


def write_outputs(
    folder: RunFolder,
    cfg: RunConfig,
    keeper: LedgerKeeper,
    record: RunRecord,
    arrays: ArrayRecord,
    model: torch.nn.Module,
    strategy: CoordinatorStrategy,
) -> None:
    """The final model, the files derived from the ledger, the ledger's closing entry and the report."""
    model.load_state_dict(arrays.to_torch_state_dict())
    torch.save(model.state_dict(), folder.path("model.pt"))
    entries = keeper.entries()
    view = RunView(entries)
    finish = _summary(folder, record, view, strategy)
    files = run_files(view, finish, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    for name, data in files.items():
        folder.path(name).write_bytes(data)
    finish["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    finish["files"]["model.pt"] = finish["model_file_sha256"]
    keeper.finished(finish)
    # The report is built from the ledger as written: the entries read above and the closing entry read back (not
    # the whole ledger parsed again: a second of a 1,000-lender run's end).
    closing = L.last_entry(folder.path("ledger.jsonl"))
    write_report(folder.staging, keeper.key, [*entries, closing])
    (folder.staging / checkpoint.FILE_NAME).unlink(missing_ok=True)  # a finished run has nothing to resume


def _summary(folder: RunFolder, record: RunRecord, view: RunView, strategy: CoordinatorStrategy) -> dict:
    """The coordinator's statement of how the run ended (the ledger's closing entry, before the file hashes)."""
    last = view.complete_rounds()[-1:]
    return {
        "rounds_completed": len(view.complete_rounds()),
        "stop": {k: record.stop[k] for k in ("kind", "round")} if record.stop else {},
        "stopped_early": record.stop.get("reason", ""),
        "model_hash": record.model_hash,
        "model_file_sha256": hashlib.sha256(folder.path("model.pt").read_bytes()).hexdigest(),
        "final_metrics": global_scores(last[0]) if last else {k: None for k in METRICS},
        "privacy": strategy.privacy_summary(record, view),
    }
