"""The coordinator's run, from its folder and keys to the committed run folder.

A run enrols the lenders and plays its rounds (server/round_driver.py), collects each lender's own signed count of
its releases and writes the run folder (server/run_outputs.py); everything the coordinator asks and receives goes
into the signed ledger (server/ledger_keeper.py), from which the run folder is derived, so the verifier can derive
it again. A run that fails leaves nothing behind, except a killed run that is being resumed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from flwr.serverapp import Grid

from federation.audit_trail import checkpoint
from federation.audit_trail import ledger as L
from federation.audit_trail.keys import keys_dir_for
from federation.audit_trail.report import write_report
from federation.audit_trail.run_view import RunView
from federation.config import RunConfig
from federation.errors import ConfigError
from federation.runfolder import RunFolder, default_run_dir
from server import checkpoints
from server.ledger_keeper import LedgerKeeper
from server.round_driver import drive_rounds
from server.run_outputs import collect_finals, write_outputs
from server.run_record import RoundSummary


def run_federation(
    grid: Grid, cfg: RunConfig, on_round: Callable[[RoundSummary], None] | None = None, resume: bool = False
) -> Path:
    """Run all rounds and write the run folder. Returns its path. With `resume`, finish the run that
    a killed coordinator left in `cfg.output_dir`'s staging folder, from its last checkpoint."""
    if not cfg.output_dir:
        cfg = cfg.replace(output_dir=str(default_run_dir()))
    keys_dir = keys_dir_for(cfg.output_dir, cfg.keys_dir)
    new_keys = not keys_dir.exists()
    folder = RunFolder.adopt(cfg.output_dir) if resume else RunFolder(cfg.output_dir)
    try:
        checkpoint_key = checkpoint.load_or_create_key(keys_dir)
        state = None
        if resume and _ledger_closed(folder):
            return _commit_closed_run(folder, cfg)
        if resume:
            keeper, state = _resume(folder, cfg, checkpoint_key)
        else:
            keeper = LedgerKeeper(folder, cfg)
        record, arrays, model, strategy = drive_rounds(grid, cfg, folder, on_round, keeper, checkpoint_key, state)
        # The lenders' final statements take their time where the lenders run; the coordinator's own accounting for
        # its report is done meanwhile. Where the lenders run in this very process (the in-process engine in one
        # process), both would compute the same epsilons at once, and the lenders' leave the coordinator's cached.
        ahead = strategy.account_ahead(record) if not getattr(grid, "runs_lenders_here", False) else None
        try:
            collect_finals(grid, cfg, keeper, record)
        except BaseException:
            if ahead is not None:
                ahead.cancel()
            raise
        if ahead is not None:
            ahead.join()
        write_outputs(folder, cfg, keeper, record, arrays, model, strategy)
        return folder.commit()
    except BaseException:
        if resume:  # keep what the killed run left: it may be resumed again once the cause is fixed
            raise
        folder.abort()
        if new_keys:  # keys made for a run that did not finish sign nothing: leave no trace of it
            shutil.rmtree(keys_dir, ignore_errors=True)
        raise


def _resume(folder: RunFolder, cfg: RunConfig, checkpoint_key: bytes) -> tuple[LedgerKeeper, dict]:
    """The ledger keeper and the checkpointed state of the killed run in `folder`."""
    if (
        cfg.strategy in ("fedadam", "fedyogi", "fedadagrad")
        or (cfg.dp and cfg.dp_level == "lender")
        or cfg.model == "gbdt"
    ):
        raise ConfigError(
            "resume supports FedAvg, FedProx, FedMedian and FedTrimmedAvg at record level, for logreg and mlp "
            "(FedAdam's, FedYogi's and FedAdagrad's moments, lender-level noise state and gbdt's structure generator "
            "are not checkpointed)"
        )
    keeper = LedgerKeeper.resume(folder, cfg)
    if (folder.staging / checkpoint.FILE_NAME).exists():
        state = checkpoint.load(folder.staging, checkpoint_key, keeper.run)
    else:  # killed in its first round: it starts from where every run starts
        view = RunView(keeper.entries())
        if len(view.manifests) != cfg.lenders:
            raise checkpoint.CheckpointError(
                f"the run was stopped before every lender's manifest was in its ledger ({len(view.manifests)} of "
                f"{cfg.lenders}), when nobody had trained yet: remove {folder.staging} and start the run again"
            )
        state = checkpoints.initial_state(cfg, view)
    finish_checkpointed_round(keeper, state)
    keeper.resumed(state["round"] + 1)
    return keeper, state


def _ledger_closed(folder: RunFolder) -> bool:
    """Whether the killed run's ledger already ends with its closing entry (run_finished)."""
    path = folder.path("ledger.jsonl")
    try:
        return path.is_file() and L.last_entry(path).get("type") == L.RUN_FINISHED
    except ValueError:  # empty, or cut off in its last line: not closed
        return False


def _commit_closed_run(folder: RunFolder, cfg: RunConfig) -> Path:
    """A run killed after its ledger's closing entry (server/run_outputs.py `write_outputs`: model.pt and every
    derived file are written before it, the report and the checkpoint's removal after it, then the commit): nothing is
    asked again. The report is written again from the ledger (the same bytes: Ed25519 signs deterministically) and
    the folder committed. Before, the resume collected the final statements again and appended a second run_finished,
    or, killed after the checkpoint's removal, failed for want of one: the run could never be finished (found by a
    red team)."""
    keeper = LedgerKeeper.resume(folder, cfg)
    write_report(folder.staging, keeper.key, keeper.entries())
    (folder.staging / checkpoint.FILE_NAME).unlink(missing_ok=True)
    return folder.commit()


def finish_checkpointed_round(keeper: LedgerKeeper, state: dict) -> None:
    """A run killed after its round's checkpoint but before the ledger's round_finished entry (server/round_driver.py
    writes them in that order): the round did finish, with everything the ledger needs of it (its aggregate and
    evaluations come before the checkpoint), so the entry is written now, with the seconds the checkpoint recorded."""
    view = RunView(keeper.entries())
    last = view.attempts[-1] if view.attempts else None
    rnd = state["round"]
    if last is not None and last.round == rnd and last.finished is None and last.aggregate is not None:
        keeper.round_finished(rnd, state["rounds"][-1]["seconds"])
