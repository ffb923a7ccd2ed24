"""Every file of a run folder, derived from the ledger alone.

The coordinator writes the run folder with these functions, and the verifier calls them again on the ledger and
compares the files byte for byte: a coordinator cannot write a config.json, metrics.csv, epsilon.csv,
privacy_events.jsonl, privacy.json, manifest, model.json, rounds.jsonl or public key that says anything the
signed ledger does not. (model.pt is not derived: its SHA-256 is in the signed `run_finished` entry; report.json
is bound to the ledger head and report.html is rendered from it; see report.py.) model.json is derived from the
ledger and the final model's arrays (the ones model.pt holds, whose hash the ledger names): everything scoring a new
applicant needs (federation/scoring.py).

`finish` is the body of the run_finished entry without its `files` (the hashes of these very files).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from federation import __version__
from federation.audit_trail import ledger as L
from federation.audit_trail.attest import MANIFEST_FIELDS
from federation.audit_trail.keys import COORDINATOR, lender_name
from federation.audit_trail.run_view import RunView, weighted_mean
from federation.config import RunConfig
from federation.metrics import METRICS
from federation.model import MODEL_FORMAT, Scorecard
from federation.runfolder import (
    EPSILON_COLUMNS,
    FEDERATION_SCOPE,
    GLOBAL_SCOPE,
    LENDER_SCOPE,
    METRICS_COLUMNS,
    csv_text,
)

# Files a run folder may hold besides these: written after the run by another command, covered by nothing here
# (the report lists them as derived and unverified).
UNVERIFIED_FILES = ("audit.json",)
NOT_DERIVED = ("ledger.jsonl", "report.json", "report.html", "model.pt")


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _gbdt_ensemble(view: RunView, cfg: RunConfig) -> dict | None:
    """A gbdt run's whole ensemble, rebuilt from the ledger (None where the ledger's records give no model: the
    verifier says where, first)."""
    from federation.audit_trail.gbdt_ledger import LedgerModelMismatch, rederived_ensemble

    try:
        return rederived_ensemble(view, cfg).to_dict()
    except LedgerModelMismatch:
        return None


def run_files(view: RunView, finish: dict, model: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    """File name (relative to the run folder) -> exact bytes. `model`: the final model's arrays by name."""
    cfg = RunConfig.from_record(view.config)
    files = {
        "config.json": json_text(_config(view, cfg, finish)),
        "metrics.csv": csv_text(METRICS_COLUMNS, metrics_rows(view)),
        "epsilon.csv": csv_text(EPSILON_COLUMNS, epsilon_rows(view, cfg)),
        "privacy_events.jsonl": "".join(json.dumps(e, sort_keys=True) + "\n" for e in privacy_events(view)),
        "privacy.json": json_text(finish.get("privacy", {})),
        "model.json": json_text(model_description(view, cfg, finish, model)),
        "rounds.jsonl": "".join(json.dumps(r, sort_keys=True) + "\n" for r in round_summaries(view)),
        f"keys/{COORDINATOR}.pub": view.started["coordinator_public_key"] + "\n",
    }
    for lender, body in sorted(view.manifests.items()):
        files[f"manifests/{lender_name(lender)}.json"] = json_text(
            {"lender": lender, **{k: body[k] for k in MANIFEST_FIELDS}}
        )
        files[f"keys/{lender_name(lender)}.pub"] = body["public_key"] + "\n"
    return {name: text.encode() for name, text in files.items()}


def model_description(view: RunView, cfg: RunConfig, finish: dict, model: Mapping[str, np.ndarray]) -> dict:
    """model.json: the model kind and its weights, the encoding every lender signed (the card as data, in lender 0's
    manifest; the verifier checks every lender signed the same), the card's name and hash and the scorecard's
    constants. Non-finite weights are written as null (JSON has no NaN); scoring refuses such a model."""
    manifest = view.manifests.get(0, {})
    encoding = json.loads(manifest["encoding"]) if manifest else {}
    scorecard = Scorecard()
    described = {
        "format": MODEL_FORMAT,
        "model": cfg.model,
        "hidden": cfg.hidden,
        "model_hash": finish.get("model_hash"),
        "weights": {
            name: {
                "shape": list(array.shape),
                "values": [
                    v if math.isfinite(v) else None for v in np.asarray(array, dtype=np.float64).ravel().tolist()
                ],
            }
            for name, array in sorted(model.items())
        },
        "dataset": manifest.get("dataset"),
        "card": manifest.get("card"),
        "card_sha256": manifest.get("card_sha256"),
        "encoding": encoding,
        "fields_used": manifest.get("fields_used", []),
        "fields_refused": manifest.get("fields_refused", []),
        "features": manifest.get("features", []),
        "scorecard": {"base_score": scorecard.base_score, "base_odds": scorecard.base_odds, "pdo": scorecard.pdo},
    }
    if cfg.model == "gbdt":  # the trees as trees (the weights above are the same ensemble as fixed-shape arrays)
        described["ensemble"] = _gbdt_ensemble(view, cfg)
    return described


def _config(view: RunView, cfg: RunConfig, finish: dict) -> dict:
    resolved = dict(view.config)
    resolved["epsilon"] = {str(lender): cfg.budget_for(lender) for lender in range(cfg.lenders)} if cfg.dp else None
    resolved["run-epsilon"] = cfg.epsilon if cfg.dp else None
    resolved["data-dir"] = view.started.get("data_dir", "")
    resolved["fedcredit-version"] = __version__
    resolved["rounds-completed"] = finish.get("rounds_completed")
    resolved["stopped-early"] = finish.get("stopped_early", "")
    return resolved


def metrics_rows(view: RunView) -> list[dict]:
    """Each lender's signed scores of each round's model on its own test records, and their weighted mean."""
    rows = []
    for attempt in view.complete_rounds():
        per_lender = sorted((e["body"] for e in attempt.of_type(L.LENDER_EVALUATION)), key=lambda b: b["lender"])
        rows += [
            {
                "round": attempt.round,
                "scope": LENDER_SCOPE,
                "lender": b["lender"],
                "num_examples": b["num_examples"],
                **{k: _cell(b.get(k)) for k in METRICS},
            }
            for b in per_lender
        ]
        weights = [b["num_examples"] for b in per_lender]
        rows.append(
            {
                "round": attempt.round,
                "scope": GLOBAL_SCOPE,
                "lender": "",
                "num_examples": sum(weights),
                **{k: _cell(weighted_mean([b.get(k) for b in per_lender], weights)) for k in METRICS},
            }
        )
    return rows


def epsilon_rows(view: RunView, cfg: RunConfig) -> list[dict]:
    """One row per lender per finished round (record level: the lender's signed, cumulative epsilon), or one per
    round for the federation (lender level)."""
    rows = []
    for attempt in view.complete_rounds():
        if cfg.dp and cfg.dp_level == "lender":
            agg = attempt.aggregate or {}
            event = agg.get("noise_event") or {}
            rows.append(
                {
                    "round": attempt.round,
                    "scope": FEDERATION_SCOPE,
                    "lender": "",
                    "epsilon": agg.get("epsilon"),
                    "delta": agg.get("delta"),
                    "sigma": event.get("noise_multiplier"),
                    "sample_rate": event.get("sample_rate"),
                    "steps": event.get("steps"),
                    "budget": cfg.epsilon,
                    "declined": 0,
                    "granularity": "lender",
                    "sampled": len(attempt.roster),
                }
            )
            continue
        if not cfg.dp:
            continue
        answers = [e["body"] for e in attempt.entries if e["type"] in (L.LENDER_UPDATE, L.LENDER_REFUSAL)]
        for body in sorted(answers, key=lambda b: b["lender"]):
            declined = body["type"] == L.LENDER_REFUSAL
            event = (body.get("events") or [{}])[0] if not declined else {}
            rows.append(
                {
                    "round": attempt.round,
                    "scope": LENDER_SCOPE,
                    "lender": body["lender"],
                    "epsilon": body.get("epsilon_spent") if declined else body.get("epsilon"),
                    "delta": body.get("delta"),
                    "sigma": event.get("noise_multiplier", ""),
                    "sample_rate": event.get("sample_rate", ""),
                    "steps": event.get("steps", 0),
                    "budget": body.get("budget"),
                    "declined": int(declined),
                    "granularity": "record",
                    "sampled": "",
                }
            )
    return rows


def privacy_events(view: RunView) -> list[dict]:
    """Every DP release as data: each lender's distinct releases, then the federation's (lender level)."""
    out = [event for lender in view.lenders() for body in view.releases(lender) for event in body.get("events", [])]
    for attempt in view.complete_rounds():
        agg = attempt.aggregate or {}
        if agg.get("noise_event"):
            out.append(agg["noise_event"])
    return out


def round_summaries(view: RunView) -> list[dict]:
    metrics = metrics_rows(view)
    out = []
    for attempt in view.complete_rounds():
        answers = [e["body"] for e in attempt.entries if e["type"] in (L.LENDER_UPDATE, L.LENDER_REFUSAL)]
        eps = [b.get("epsilon") for b in answers if b["type"] == L.LENDER_UPDATE and b.get("epsilon") is not None]
        eps += [
            b.get("epsilon_spent")
            for b in answers
            if b["type"] == L.LENDER_REFUSAL and b.get("epsilon_spent") is not None
        ]
        agg = attempt.aggregate or {}
        if agg.get("epsilon") is not None:
            eps.append(agg["epsilon"])
        glob = next((r for r in metrics if r["round"] == attempt.round and r["scope"] == GLOBAL_SCOPE), {})
        finished = attempt.finished
        if finished is None:  # cannot happen: complete_rounds() holds finished rounds only
            raise ValueError(f"round {attempt.round} is not finished")
        out.append(
            {
                "round": attempt.round,
                "trained": sum(b["type"] == L.LENDER_UPDATE for b in answers),
                "declined": sum(b["type"] == L.LENDER_REFUSAL for b in answers),
                "global_metrics": {k: glob.get(k) if glob.get(k) != "" else None for k in METRICS},
                "max_epsilon": max(eps) if eps else 0.0,
                "seconds": finished["body"]["seconds"],
            }
        )
    return out


def _cell(value: float | None) -> float | str:
    return "" if value is None else value
