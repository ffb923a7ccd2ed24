"""`fedcredit audit`: train once with canaries in one lender's data, then measure what leaked.

The auditor draws the canaries and, from the CSPRNG, which of them go in; it hands only the inserted ones to the
audited lender's own folder (they join its training split there) and keeps the draw to itself. It runs the
ordinary federation (same ClientApp and ServerApp), loads the final model, scores every canary by its loss, and
reports the one-run epsilon lower bound next to the claimed epsilon and the largest claim this audit could have
refuted, with membership-inference AUCs on the canaries and on natural records.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from federation.config import RunConfig
from federation.data import load_lender
from federation.errors import ConfigError
from federation.model import model_for
from federation.privacy.accountant import default_delta
from federation.privacy.one_run_audit import (
    audit_size,
    epsilon_lower_bound,
    guess_counts,
    largest_refutable,
    make_canaries,
)
from federation.runfolder import write_atomically


def per_record_loss(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.as_tensor(x, dtype=torch.float32)).to(torch.float64)  # gbdt's logits are float64
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.as_tensor(y, dtype=torch.float64), reduction="none"
        )
    return loss.numpy()


def audit(
    cfg: RunConfig,
    lender: int = 0,
    canaries: int | None = None,
    guesses: int | None = None,
    confidence: float = 0.95,
    on_round=None,
) -> dict:
    """Run `cfg` with canaries in `lender`'s training data. Without `canaries`/`guesses`, the audit is sized so that
    it could refute the claim (federation.privacy.one_run_audit.audit_size). Guesses are fixed now, before training."""
    from fedcredit.runner import run

    if not 0 <= lender < cfg.lenders:
        raise ConfigError(f"the audited lender must be in 0..{cfg.lenders - 1}, got {lender}")
    if not 0.5 <= confidence < 1:
        raise ConfigError(f"confidence must be in [0.5, 1), got {confidence}")
    natural = load_lender(cfg, lender)
    delta = cfg.delta or default_delta(len(natural.y_train))
    if canaries is None or guesses is None:
        sized = audit_size(cfg.budget_for(lender) if cfg.dp else 8.0, delta, confidence)
        canaries, guesses = canaries or sized[0], guesses or min(sized[1], canaries or sized[0])
    if canaries < 2:
        raise ConfigError(f"an audit needs at least 2 canaries, got {canaries}")
    if not 2 <= guesses <= canaries:
        raise ConfigError(f"guesses must be between 2 and the number of canaries ({canaries}), got {guesses}")
    k_positive, k_negative = guesses // 2, guesses - guesses // 2
    drawn = make_canaries(len(natural.features), canaries)
    folder = run(cfg, on_round=on_round or (lambda s: None), canaries={lender: drawn.inserted})
    info = json.loads((folder / "model.json").read_text())
    model = model_for(cfg, len(info["features"]))
    model.load_state_dict(torch.load(folder / "model.pt"))
    model.eval()

    scores = -per_record_loss(model, drawn.x, drawn.y)  # low loss: looks like a member
    r, v = guess_counts(scores, drawn.included, k_positive, k_negative)
    natural_scores = -np.concatenate(
        [
            per_record_loss(model, natural.x_train, natural.y_train),
            per_record_loss(model, natural.x_test, natural.y_test),
        ]
    )
    natural_member = np.concatenate([np.ones(len(natural.y_train)), np.zeros(len(natural.y_test))])
    privacy = json.loads((folder / "privacy.json").read_text())
    if privacy.get("dp"):
        unit = privacy["units"]["federation" if cfg.dp_level == "lender" else str(lender)]
        claimed, delta = unit["epsilon"], unit["delta"]
    else:
        claimed = math.inf
    result = {
        "run_folder": str(folder),
        "lender": lender,
        "canaries": canaries,
        "canaries_inserted": int(drawn.included.sum()),
        "guesses": r,
        "guesses_member": k_positive,
        "guesses_non_member": k_negative,
        "correct": v,
        "confidence": confidence,
        "delta": delta,
        "epsilon_lower_bound": epsilon_lower_bound(canaries, r, v, delta, confidence),
        "epsilon_claimed": claimed,
        "largest_refutable": largest_refutable(canaries, r, delta, confidence),
        "granularity": privacy.get("granularity") if privacy.get("dp") else None,
        "mia_auc_canaries": float(roc_auc_score(drawn.included, scores)),
        "mia_auc_natural": float(roc_auc_score(natural_member, natural_scores)),
        "method": "Steinke, Nasr, Jagielski (2023), one training run; canaries scored by loss; inclusion drawn from "
        "the operating system's CSPRNG",
    }
    _write_json_atomically(folder / "audit.json", result)
    return result


def _write_json_atomically(path: Path, data: dict) -> None:
    # Strict JSON: an infinite claim (no DP) is written as null.
    plain = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in data.items()}
    write_atomically(path, json.dumps(plain, indent=2, allow_nan=False) + "\n")
