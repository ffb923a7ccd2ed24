"""`fedcredit bench`: the best pooled model (scikit-learn histogram gradient boosting, "hgb": the limit), pooled
training of the federation's own model ("pooled": the same-family limit), local-only, and the federated methods
(FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad; gbdt where the build has it) with and without DP, over datasets,
partitions and seeds (after FLamby, NeurIPS 2022 datasets and benchmarks track).

Every method is scored on the pooled held-out test (no method trains on it; `lender` = "pooled") and
on each lender's own test split (`lender` = its id). Local-only models are also scored on the pooled
held-out test, one row per lender with `test_set` = "pooled". Pooled and local-only training are
non-private (the limits), and so is hgb, trained on exactly the records pooled training sees and scored on the same
held-out and own test splits; the federated strategies run at every privacy level (record level, per lender).
Results are appended to results.csv after every cell, and a rerun skips the cells already there.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compare import best_pooled_model, train_alone
from benchmarks.constants import CONSTANTS, DEFAULT_METHODS, EPSILONS, NON_PRIVATE, PARTITIONS, unavailable
from federation.config import RunConfig
from federation.data import load_holdout, load_lender
from federation.gbdt.boosting import GbdtParams
from federation.metrics import credit_metrics
from federation.model import model_for, predict_proba
from federation.runfolder import csv_text, write_atomically

COLUMNS = [
    "dataset",
    "partition",
    "method",
    "epsilon",
    "seed",
    "lender",
    "test_set",
    "n",
    "auc",
    "ks",
    "gini",
    "brier",
    "epsilon_spent",
    "seconds",
]
SCORES = ("auc", "ks", "gini", "brier")


@dataclass(frozen=True)
class Cell:
    dataset: str
    partition: str
    alpha: float
    method: str
    epsilon: float
    seed: int

    @property
    def partition_label(self) -> str:
        return self.partition + (f"({self.alpha:g})" if self.partition in ("dirichlet", "quantity") else "")

    def key(self) -> tuple:
        return (self.dataset, self.partition_label, self.method, _eps_text(self.epsilon), str(self.seed))


def _eps_text(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def grid(
    datasets: Iterable[str],
    seeds: Iterable[int],
    methods: Iterable[str] = DEFAULT_METHODS,
    epsilons: Iterable[float] = EPSILONS,
    partitions: dict | None = None,
) -> list[Cell]:
    """The cells to run; a method this build cannot run (`unavailable`) has none (bench says why)."""
    cells = []
    runnable = [m for m in methods if not unavailable(m)]
    for dataset in datasets:
        for partition, alpha in (partitions or PARTITIONS).get(dataset, (partitions or PARTITIONS)["default"]):
            for seed in seeds:
                for method in runnable:
                    for eps in epsilons if method not in NON_PRIVATE else [math.inf]:
                        cells.append(Cell(dataset, partition, alpha, method, eps, seed))
    return cells


# gbdt boosts for the rounds its tuning chose (benchmarks/results/gbdt_tuning.md), not the DP-SGD models' rounds
GBDT_ROUNDS = GbdtParams().rounds


def config_for(cell: Cell, data_dir: str = "", overrides: dict[str, Any] | None = None) -> RunConfig:
    c = CONSTANTS[cell.dataset]
    cfg = RunConfig(
        dataset=cell.dataset,
        data_dir=data_dir,
        lenders=c.lenders,
        partition=cell.partition,
        alpha=cell.alpha,
        rounds=GBDT_ROUNDS if cell.method == "gbdt" else c.rounds,
        local_epochs=c.local_epochs,
        batch_size=c.batch_size,
        learning_rate=c.learning_rate,
        model="gbdt" if cell.method == "gbdt" else c.model,
        hidden=c.hidden,
        optimizer=c.optimizer,
        lr_schedule=c.lr_schedule,
        weight_decay=c.weight_decay,
        records=c.records,
        seed=cell.seed,
        clip_norm=c.clip_norm,
        delta=c.delta,
        strategy=cell.method if cell.method.startswith("fed") else "fedavg",
        dp=math.isfinite(cell.epsilon),
        epsilon=cell.epsilon if math.isfinite(cell.epsilon) else 3.0,
        engine="inprocess",
    )
    if cell.method == "pooled":  # the best-trained pooled model of the federation's family (constants.py)
        pooled: dict[str, Any] = dict(c.pooled)
        cfg = dataclasses.replace(cfg, **pooled)
    if cell.method == "gbdt":  # the dataset's own gbdt tuning, where it differs from the defaults (constants.py)
        gbdt: dict[str, Any] = dict(c.gbdt)
        cfg = dataclasses.replace(cfg, **gbdt)
        if cfg.gbdt_split_candidates == "noisy_quantiles":  # round 1 is the count release: the tuned tree rounds follow
            cfg = dataclasses.replace(cfg, rounds=cfg.rounds + 1)
    return dataclasses.replace(cfg, **(overrides or {})).validated()


def _scores(model, x, y) -> dict:
    if not len(y):
        return {k: math.nan for k in SCORES}
    return credit_metrics(y, model.proba(x) if isinstance(model, _Boosted) else predict_proba(model, x))


class _Boosted:
    """A fitted scikit-learn classifier where `_scores` expects a model (probability of default)."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier

    def proba(self, x: np.ndarray) -> np.ndarray:
        return self.classifier.predict_proba(x)[:, 1]


def run_cell(cell: Cell, cfg: RunConfig) -> list[dict]:
    """Rows for one cell: pooled held-out and per-lender own-test scores."""
    lenders = [load_lender(cfg, i) for i in range(cfg.lenders)]
    hx, hy = load_holdout(cfg)
    rows, spent = [], ""
    if cell.method in ("pooled", "hgb"):
        x, y = np.concatenate([d.x_train for d in lenders]), np.concatenate([d.y_train for d in lenders])
        model = (
            _Boosted(best_pooled_model(cell.dataset, x, y, cfg.seed))
            if cell.method == "hgb"
            else train_alone(cfg, x, y, cfg.seed)
        )
        models = [model] * len(lenders)
        rows.append({"lender": "pooled", "test_set": "pooled", "n": len(hy), **_scores(model, hx, hy)})
    elif cell.method == "local":
        models = [train_alone(cfg, d.x_train, d.y_train, cfg.seed + i) for i, d in enumerate(lenders)]
        for i, model in enumerate(models):
            rows.append({"lender": i, "test_set": "pooled", "n": len(hy), **_scores(model, hx, hy)})
    else:
        import json

        import torch

        from fedcredit.runner import run

        with tempfile.TemporaryDirectory() as tmp:
            folder = run(cfg.replace(output_dir=str(Path(tmp) / "run")), on_round=lambda s: None)
            model = model_for(cfg, len(lenders[0].features))
            model.load_state_dict(torch.load(folder / "model.pt"))
            privacy = json.loads((folder / "privacy.json").read_text())
        if privacy.get("dp"):
            spent = max(u["epsilon"] for u in privacy["units"].values())
        models = [model] * len(lenders)
        rows.append({"lender": "pooled", "test_set": "pooled", "n": len(hy), **_scores(model, hx, hy)})
    for i, (d, model) in enumerate(zip(lenders, models, strict=False)):
        rows.append({"lender": i, "test_set": "own", "n": len(d.y_test), **_scores(model, d.x_test, d.y_test)})
    base = {
        "dataset": cell.dataset,
        "partition": cell.partition_label,
        "method": cell.method,
        "epsilon": _eps_text(cell.epsilon),
        "seed": cell.seed,
        "epsilon_spent": spent,
    }
    return [{**base, **r} for r in rows]


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and set(COLUMNS) - set(rows[0]):
        raise ValueError(f"{path} is not a fedcredit bench results file (columns {sorted(rows[0])})")
    return rows


def write_results(path: Path, rows: list[dict]) -> None:
    write_atomically(path, csv_text(COLUMNS, rows, extrasaction="ignore"))


def bench(
    cells: list[Cell],
    output_dir: Path,
    data_dir: str = "",
    overrides: dict | None = None,
    command: str = "",
    results_md: Path | None = None,
    log: Callable[[str], None] = print,
    methods: Iterable[str] = DEFAULT_METHODS,
) -> list[dict]:
    """Run the cells not yet in OUTPUT_DIR/results.csv, then write the plots and RESULTS.md. `methods`: the ones
    asked for, so that those this build cannot run are named, with the reason, in the log and in RESULTS.md."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "results.csv"
    rows = read_results(path)
    done = {(r["dataset"], r["partition"], r["method"], r["epsilon"], r["seed"]) for r in rows}
    todo = [c for c in cells if c.key() not in done]
    skipped = {m: unavailable(m) for m in methods if unavailable(m)}
    for method, why in skipped.items():
        log(f"skipped {method}: {why}")
    log(f"{len(cells)} cells, {len(cells) - len(todo)} already in {path}, {len(todo)} to run")
    for number, cell in enumerate(todo, start=1):
        start = time.time()
        new = run_cell(cell, config_for(cell, data_dir, overrides))
        seconds = round(time.time() - start, 2)
        rows.extend({**r, "seconds": seconds} for r in new)
        write_results(path, rows)
        pooled = next((r for r in new if r["lender"] == "pooled"), None)
        auc = pooled["auc"] if pooled else statistics.mean(r["auc"] for r in new if r["test_set"] == "pooled")
        log(
            f"[{number}/{len(todo)}] {cell.dataset} {cell.partition_label} {cell.method} "
            f"epsilon={_eps_text(cell.epsilon)} seed={cell.seed}: pooled-test AUC {auc:.4f} ({seconds:.1f} s)"
        )
    from benchmarks.report import plots, write_results_md

    # The report reads the rows as the file holds them (strings), as a rerun does: the new rows' ints beside the
    # file's strings ("0" and 0) split a lender's own-test scores from its local model's, and RESULTS.md counted no
    # lender beating its local model for the cells a run had just added.
    rows = read_results(path)
    plots(rows, output_dir)
    write_results_md(rows, command, results_md or output_dir / "RESULTS.md", skipped)
    return rows
