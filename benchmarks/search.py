"""Search the per-dataset benchmark constants on a validation split of the pooled training data.

For each dataset, on the bench's own split (its first partition in constants.PARTITIONS, seed 0): the lenders'
training records are pooled and a stratified fifth of them is set aside as validation. Every candidate is
trained on the other four fifths and scored (AUC) on the validation fifth; the pooled held-out test and the
lenders' own test splits are never read. Two searches:

- the neural model (logreg or mlp, local optimizer, learning rate, schedule, width, weight decay), trained for
  the dataset's rounds x local epochs (the budget of local steps every bench method gets);
- scikit-learn's HistGradientBoostingClassifier (the best pooled model, the limit in the headline).

    python -m benchmarks.search --datasets taiwan_default --out benchmarks/results/search

writes OUT/search.csv (every candidate and its validation AUC) and OUT/search.md (the best per dataset and
search, with this command). The winners are copied by hand into benchmarks/constants.py, with a comment.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.constants import BENCH_DATASETS, CONSTANTS, PARTITIONS
from federation.runfolder import csv_text, write_atomically

VALIDATION_FRACTION = 0.2

# The neural candidates: (model, optimizer, learning rate, schedule, hidden, weight decay). SGD is the project's
# momentum-0.9 step at the learning rates the bench used before; AdamW at the usual 1e-3 .. 1e-2.
NN_GRID: list[dict[str, Any]] = [
    *(
        {
            "model": m,
            "optimizer": "sgd",
            "learning_rate": lr,
            "lr_schedule": "constant",
            "hidden": 32,
            "weight_decay": 0.0,
        }
        for m in ("logreg", "mlp")
        for lr in (0.1, 0.3)
    ),
    *(
        {
            "model": "logreg",
            "optimizer": "adamw",
            "learning_rate": lr,
            "lr_schedule": "cosine",
            "hidden": 32,
            "weight_decay": 0.0,
        }
        for lr in (0.01, 0.03)
    ),
    *(
        {
            "model": "mlp",
            "optimizer": "adamw",
            "learning_rate": lr,
            "lr_schedule": "cosine",
            "hidden": h,
            "weight_decay": wd,
        }
        for lr, h, wd in itertools.product((0.003, 0.01, 0.03), (32, 128, 256), (0.0, 0.01))
    ),
]
HGB_GRID: list[dict[str, Any]] = [
    {"learning_rate": lr, "max_leaf_nodes": leaves, "min_samples_leaf": leaf, "l2_regularization": l2, "max_iter": it}
    for lr, leaves, leaf, l2, it in itertools.product((0.03, 0.1), (7, 15, 31), (20, 100), (0.0, 1.0), (100, 300))
]
COLUMNS = ["dataset", "search", "candidate", "validation_auc", "seconds"]


def pooled_training(dataset: str, data_dir: str = "") -> tuple[Any, np.ndarray, np.ndarray]:
    """The bench's config for `dataset` (seed 0) and its lenders' training records, pooled."""
    from benchmarks.bench import Cell, config_for
    from federation.data import load_lender

    partition, alpha = PARTITIONS.get(dataset, PARTITIONS["default"])[0]
    cfg = config_for(Cell(dataset, partition, alpha, "pooled", math.inf, 0), data_dir)
    lenders = [load_lender(cfg, i) for i in range(cfg.lenders)]
    return cfg, np.concatenate([d.x_train for d in lenders]), np.concatenate([d.y_train for d in lenders])


def validation_split(x: np.ndarray, y: np.ndarray, seed: int = 0):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=VALIDATION_FRACTION, stratify=y, random_state=seed)


def hgb(params: dict[str, Any], seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(early_stopping=False, random_state=seed, **params)


def search(dataset: str, data_dir: str = "", log=print) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    from benchmarks.compare import train_alone
    from federation.model import predict_proba

    cfg, x, y = pooled_training(dataset, data_dir)
    x_fit, x_val, y_fit, y_val = validation_split(x, y)
    rows = []
    for candidate in NN_GRID:
        t = time.time()
        model = train_alone(cfg.replace(**candidate), x_fit, y_fit, cfg.seed)
        auc = float(roc_auc_score(y_val, predict_proba(model, x_val)))
        rows.append(_row(dataset, "nn", candidate, auc, time.time() - t, log))
    for params in HGB_GRID:
        t = time.time()
        auc = float(roc_auc_score(y_val, hgb(params, cfg.seed).fit(x_fit, y_fit).predict_proba(x_val)[:, 1]))
        rows.append(_row(dataset, "hgb", params, auc, time.time() - t, log))
    return rows


def _row(dataset: str, kind: str, candidate: dict, auc: float, seconds: float, log) -> dict:
    text = " ".join(f"{k}={v}" for k, v in candidate.items())
    log(f"{dataset} {kind} {text}: validation AUC {auc:.4f} ({seconds:.1f} s)")
    return {
        "dataset": dataset,
        "search": kind,
        "candidate": text,
        "validation_auc": f"{auc:.4f}",
        "seconds": f"{seconds:.1f}",
    }


def best(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(dataset, search) -> its best row (the first of equal AUCs: the grid's simpler candidate)."""
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["dataset"], r["search"])
        if key not in out or float(r["validation_auc"]) > float(out[key]["validation_auc"]):
            out[key] = r
    return out


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"Validation: a stratified {VALIDATION_FRACTION:.0%} of the pooled training records of the bench's split "
        "(seed 0); candidates train on the rest for the dataset's rounds x local epochs. No test data is read.",
        "",
        "| dataset | search | best candidate | validation AUC | candidates |",
        "|---|---|---|---:|---:|",
    ]
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r["dataset"], r["search"])] = counts.get((r["dataset"], r["search"]), 0) + 1
    for (dataset, kind), r in sorted(best(rows).items()):
        lines.append(f"| {dataset} | {kind} | {r['candidate']} | {r['validation_auc']} | {counts[(dataset, kind)]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from federation.training import set_torch_threads

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(BENCH_DATASETS))
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--out", required=True, help="output folder (search.csv and search.md)")
    args = parser.parse_args(argv)
    set_torch_threads()
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = [d for d in datasets if d not in CONSTANTS]
    if unknown:
        print(f"error: unknown dataset(s) {', '.join(unknown)} (choose from {', '.join(CONSTANTS)})", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for dataset in datasets:
        rows.extend(search(dataset, args.data_dir))
        write_atomically(out / "search.csv", csv_text(COLUMNS, rows))
    command = " ".join(["python -m benchmarks.search"] + (argv if argv is not None else sys.argv[1:]))
    write_atomically(out / "search.md", markdown(rows, command))
    print((out / "search.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
