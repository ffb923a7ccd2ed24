"""Pooled vs local-only vs federated (with and without DP), evaluated on the pooled held-out test.

Every method trains the same model with the same number of local epochs in total
(rounds x local epochs), and is scored on the pooled held-out test set that no method trains on.
Federated runs go through the real ClientApp/ServerApp on the in-process engine.

    python -m benchmarks.compare --dataset taiwan_default --lenders 10 --partition dirichlet \
        --alpha 0.5 --seeds 0,1,2 --epsilons inf,1,3,8 --out benchmarks/results/taiwan_slice

writes OUT.csv (one row per method, epsilon, seed) and OUT.md (means and spread over seeds).
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from federation.config import DATASETS, MODELS, PARTITIONS, RunConfig
from federation.data import load_holdout, load_lender
from federation.metrics import credit_metrics
from federation.model import build_model, model_for, predict_proba, set_arrays
from federation.training import LocalOptimizer, train_local

COLUMNS = ["dataset", "partition", "method", "epsilon", "seed", "auc", "ks", "gini", "brier", "seconds"]


def train_alone(cfg: RunConfig, x: np.ndarray, y: np.ndarray, seed: int):
    """One model trained without federation or privacy for rounds x local epochs: the same budget of
    local steps as one federated run (pooled training, or one lender on its own). For gbdt: the same boosting
    (rounds, trees, depth, bins, leaf values) without noise, as one party (federation.gbdt's simulate)."""
    if cfg.model == "gbdt":
        return _boosted_alone(cfg, x, y, seed)
    model = build_model(cfg.model, x.shape[1], cfg.hidden, seed=cfg.seed)
    train_local(
        model,
        x,
        y,
        epochs=cfg.rounds * cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        seed=seed,
        optim=LocalOptimizer.of(cfg),
    )
    return model


def _boosted_alone(cfg: RunConfig, x: np.ndarray, y: np.ndarray, seed: int):
    from federation.gbdt.binning import bin_features
    from federation.gbdt.boosting import simulate
    from federation.tree_model import gbdt_params, tree_model_of

    binned = bin_features(x, cfg.gbdt_bins)
    ensemble = simulate([(binned, y)], gbdt_params(cfg), np.random.default_rng(seed), noise=False)
    return tree_model_of(cfg, ensemble)


def pooled(cfg: RunConfig) -> dict:
    """Centralized training on all lenders' training records together (the non-private limit)."""
    parts = [load_lender(cfg, i) for i in range(cfg.lenders)]
    model = train_alone(
        cfg, np.concatenate([p.x_train for p in parts]), np.concatenate([p.y_train for p in parts]), cfg.seed
    )
    hx, hy = load_holdout(cfg)
    return credit_metrics(hy, predict_proba(model, hx))


def best_pooled_model(dataset: str, x: np.ndarray, y: np.ndarray, seed: int):
    """scikit-learn's HistGradientBoostingClassifier with the dataset's parameters searched on validation data
    (benchmarks/search.py -> benchmarks/constants.py; scikit-learn's defaults for a dataset without constants),
    fitted on (x, y): the best pooled non-private model, the limit the headline measures against."""
    from benchmarks.constants import CONSTANTS
    from benchmarks.search import hgb

    return hgb(CONSTANTS[dataset].hgb_params() if dataset in CONSTANTS else {}, seed).fit(x, y)


def best_pooled(cfg: RunConfig) -> dict:
    """The best pooled model on all lenders' training records, scored on the pooled held-out test."""
    parts = [load_lender(cfg, i) for i in range(cfg.lenders)]
    x, y = np.concatenate([p.x_train for p in parts]), np.concatenate([p.y_train for p in parts])
    hx, hy = load_holdout(cfg)
    return credit_metrics(hy, best_pooled_model(cfg.dataset, x, y, cfg.seed).predict_proba(hx)[:, 1])


def local_only(cfg: RunConfig) -> list[dict]:
    """Each lender alone, no privacy, the same number of local epochs as one federated run."""
    hx, hy = load_holdout(cfg)
    out = []
    for i in range(cfg.lenders):
        data = load_lender(cfg, i)
        model = train_alone(cfg, data.x_train, data.y_train, cfg.seed + i)
        out.append(credit_metrics(hy, predict_proba(model, hx)))
    return out


def federated(cfg: RunConfig) -> dict:
    return federated_run(cfg)[0]


def federated_run(cfg: RunConfig) -> tuple[dict, dict]:
    """Held-out metrics of the federated model, and the run's privacy.json."""
    import json

    import torch

    from fedcredit.runner import run

    with tempfile.TemporaryDirectory() as tmp:
        path = run(cfg.replace(engine="inprocess", output_dir=str(Path(tmp) / "run")), on_round=lambda s: None)
        state = torch.load(path / "model.pt")
        privacy = json.loads((path / "privacy.json").read_text())
        n_features = len(load_lender(cfg, 0).features)
        model = model_for(cfg, n_features)
        set_arrays(model, {k: v.numpy() for k, v in state.items()})
        shutil.rmtree(path, ignore_errors=True)
    hx, hy = load_holdout(cfg)
    return credit_metrics(hy, predict_proba(model, hx)), privacy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="taiwan_default", choices=DATASETS)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--lenders", type=int, default=10)
    parser.add_argument("--partition", default="dirichlet", choices=PARTITIONS)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=0.5)
    parser.add_argument("--model", default="logreg", choices=MODELS)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epsilons", default="inf,1,3,8")
    parser.add_argument("--out", required=True, help="output path without extension (.csv and .md are written)")
    args = parser.parse_args(argv)
    base = RunConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        lenders=args.lenders,
        partition=args.partition,
        alpha=args.alpha,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        model=args.model,
    ).validated()
    rows = []

    def add(method: str, eps: float, seed: int, metrics: dict, seconds: float) -> None:
        rows.append(
            {
                "dataset": args.dataset,
                "partition": f"{args.partition}" + (f"({args.alpha:g})" if args.partition != "iid" else ""),
                "method": method,
                "epsilon": eps,
                "seed": seed,
                "seconds": round(seconds, 2),
                **{k: metrics[k] for k in ("auc", "ks", "gini", "brier")},
            }
        )
        print(f"{method:>12} eps={eps:<4} seed={seed} auc={metrics['auc']:.4f} ({seconds:.1f} s)", flush=True)

    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = base.replace(seed=seed)
        t = time.time()
        add("pooled", math.inf, seed, pooled(cfg), time.time() - t)
        t = time.time()
        locals_ = local_only(cfg)
        add(
            "local_mean",
            math.inf,
            seed,
            {k: float(np.nanmean([m[k] for m in locals_])) for k in ("auc", "ks", "gini", "brier")},
            time.time() - t,
        )
        add("local_worst", math.inf, seed, min(locals_, key=lambda m: m["auc"]), 0.0)
        for eps in [float(e) for e in args.epsilons.split(",")]:
            run_cfg = cfg.replace(dp=math.isfinite(eps), epsilon=eps if math.isfinite(eps) else 1.0)
            t = time.time()
            add("fedavg", eps, seed, federated(run_cfg), time.time() - t)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    out.with_suffix(".md").write_text(
        summary_table(rows, " ".join(["python -m benchmarks.compare"] + (argv if argv is not None else sys.argv[1:])))
    )
    print(out.with_suffix(".md").read_text())
    return 0


def summary_table(rows: list[dict], command: str) -> str:
    groups: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["epsilon"])), []).append(float(r["auc"]))
    pooled_auc = statistics.mean(groups[("pooled", math.inf)])
    lines = [
        f"Command: `{command}`",
        "",
        "| method | epsilon | AUC mean | AUC sd | vs pooled | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for (method, eps), aucs in groups.items():
        sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        lines.append(
            f"| {method} | {'none' if math.isinf(eps) else f'{eps:g}'} | {statistics.mean(aucs):.4f} | {sd:.4f} | "
            f"{statistics.mean(aucs) - pooled_auc:+.4f} | {len(aucs)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
