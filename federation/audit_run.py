"""`fedcredit audit`: train once with canaries in one lender's data, then measure what leaked.

Runs the ordinary federation (same ClientApp and ServerApp) with the audit options set, loads the
final model, scores every canary by its loss, and reports the one-run epsilon lower bound next to
the claimed epsilon, with membership-inference AUCs on the canaries and on natural records.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from federation.audit import epsilon_lower_bound, guess_counts, make_canaries
from federation.config import RunConfig
from federation.data import load_lender
from federation.errors import ConfigError
from federation.model import build_model
from federation.privacy.accountant import default_delta
from federation.runfolder import write_atomically


def per_record_loss(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.as_tensor(x, dtype=torch.float32))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.as_tensor(y, dtype=torch.float32),
                                                                    reduction="none")
    return loss.numpy()


def audit(cfg: RunConfig, canaries: int, guesses: int, confidence: float = 0.95, on_round=None) -> dict:
    """Run `cfg` with `canaries` canaries in lender cfg.audit_lender; `guesses` (fixed now, before
    training) are split evenly between "member" and "non-member" guesses."""
    if canaries < 2:
        raise ConfigError(f"an audit needs at least 2 canaries, got {canaries}")
    if not 2 <= guesses <= canaries:
        raise ConfigError(f"guesses must be between 2 and the number of canaries ({canaries}), got {guesses}")
    if not 0.5 <= confidence < 1:
        raise ConfigError(f"confidence must be in [0.5, 1), got {confidence}")
    from federation.runner import run

    k_positive, k_negative = guesses // 2, guesses - guesses // 2
    cfg = cfg.replace(audit_canaries=canaries)
    folder = run(cfg, on_round=on_round or (lambda s: None))
    info = json.loads((folder / "model.json").read_text())
    model = build_model(info["model"], len(info["features"]), info["hidden"])
    model.load_state_dict(torch.load(folder / "model.pt"))
    model.eval()

    drawn = make_canaries(len(info["features"]), canaries, cfg.seed)
    scores = -per_record_loss(model, drawn.x, drawn.y)  # low loss: looks like a member
    r, v = guess_counts(scores, drawn.included, k_positive, k_negative)
    natural = load_lender(cfg.replace(audit_canaries=0), cfg.audit_lender)
    natural_scores = -np.concatenate([per_record_loss(model, natural.x_train, natural.y_train),
                                      per_record_loss(model, natural.x_test, natural.y_test)])
    natural_member = np.concatenate([np.ones(len(natural.y_train)), np.zeros(len(natural.y_test))])

    privacy = json.loads((folder / "privacy.json").read_text())
    train_records = len(natural.y_train) + int(drawn.included.sum())
    if privacy.get("dp"):
        unit = privacy["units"]["federation" if cfg.dp_level == "lender" else str(cfg.audit_lender)]
        claimed, delta = unit["epsilon"], unit["delta"]
    else:
        claimed, delta = math.inf, cfg.delta or default_delta(train_records)
    bound = epsilon_lower_bound(canaries, r, v, delta, confidence)
    result = {
        "run_folder": str(folder), "lender": cfg.audit_lender, "canaries": canaries,
        "canaries_inserted": int(drawn.included.sum()), "guesses": r, "guesses_member": k_positive,
        "guesses_non_member": k_negative, "correct": v, "confidence": confidence, "delta": delta,
        "epsilon_lower_bound": bound, "epsilon_claimed": claimed,
        "granularity": privacy.get("granularity") if privacy.get("dp") else None,
        "mia_auc_canaries": float(roc_auc_score(drawn.included, scores)),
        "mia_auc_natural": float(roc_auc_score(natural_member, natural_scores)),
        "method": "Steinke, Nasr, Jagielski (2023), one training run; canaries scored by loss",
    }
    _write_json_atomically(folder / "audit.json", result)
    return result


def _write_json_atomically(path: Path, data: dict) -> None:
    # Strict JSON: an infinite claim (no DP) is written as null.
    plain = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in data.items()}
    write_atomically(path, json.dumps(plain, indent=2, allow_nan=False) + "\n")
