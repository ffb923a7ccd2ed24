"""The privacy-utility frontier: held-out AUC against epsilon, with spread across seeds.

For each seed: the best pooled model (scikit-learn histogram gradient boosting with the dataset's searched
parameters, benchmarks/compare.py best_pooled: the limit), pooled non-private training of the federation's own
model (the same-family limit), each lender alone (non-private), and the
federation at every epsilon (inf = no DP), all scored on the pooled held-out test no method trains
on; optionally a second federated line, DP federated gradient boosting (`gbdt`, its own rounds and settings), on
the same seeds and epsilons. Writes frontier.csv (one row per method, epsilon, seed) and frontier.png. Run it with
`fedcredit sweep` (see the README for the benchmark command).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.compare import best_pooled, federated_run, local_only, pooled
from federation.config import RunConfig
from federation.runfolder import csv_text, write_atomically

COLUMNS = [
    "dataset",
    "partition",
    "method",
    "epsilon",
    "seed",
    "auc",
    "ks",
    "gini",
    "brier",
    "epsilon_spent_max",
    "seconds",
]
SCORES = ("auc", "ks", "gini", "brier")


def sweep(
    base: RunConfig,
    epsilons: list[float],
    seeds: list[int],
    output_dir: Path,
    log: Callable[[str], None] = print,
    command: str = "",
    gbdt: RunConfig | None = None,
) -> list[dict]:
    """`base` is the federated line's run (any model); `gbdt`, if given, a second federated line's (model gbdt),
    run at the same epsilons and seeds. Rows are labelled by method: the strategy, or "gbdt"."""
    if gbdt is not None and (gbdt.model != "gbdt" or base.model == "gbdt"):
        raise ValueError("the second federated line must be a gbdt run, beside a first that is not")
    output_dir.mkdir(parents=True, exist_ok=True)
    partition = base.partition + (f"({base.alpha:g})" if base.partition in ("dirichlet", "quantity") else "")
    rows: list[dict] = []

    def add(method: str, eps: float, seed: int, metrics: dict, seconds: float, spent: float | str = "") -> None:
        rows.append(
            {
                "dataset": base.dataset,
                "partition": partition,
                "method": method,
                "epsilon": eps,
                "seed": seed,
                **{k: metrics[k] for k in SCORES},
                "epsilon_spent_max": spent,
                "seconds": round(seconds, 2),
            }
        )
        log(
            f"{method:>12} epsilon={'none' if math.isinf(eps) else f'{eps:g}':<5} seed={seed} "
            f"auc={metrics['auc']:.4f} ({seconds:.1f} s)"
        )
        _write_csv(output_dir / "frontier.csv", rows)  # after every run: an interrupted sweep keeps its results

    for seed in seeds:
        cfg = base.replace(seed=seed)
        t = time.time()
        add("hgb", math.inf, seed, best_pooled(cfg), time.time() - t)
        t = time.time()
        add("pooled", math.inf, seed, pooled(cfg), time.time() - t)
        t = time.time()
        locals_ = local_only(cfg)
        add(
            "local_mean",
            math.inf,
            seed,
            {k: float(np.nanmean([m[k] for m in locals_])) for k in SCORES},
            time.time() - t,
        )
        add("local_worst", math.inf, seed, min(locals_, key=lambda m: m["auc"]), 0.0)
        lines = [cfg] + ([gbdt.replace(seed=seed)] if gbdt is not None else [])
        for line in lines:
            for eps in epsilons:
                private = math.isfinite(eps)
                run_cfg = line.replace(dp=private, epsilon=eps if private else line.epsilon)
                t = time.time()
                metrics, privacy = federated_run(run_cfg)
                spent = max(u["epsilon"] for u in privacy["units"].values()) if private else ""
                add(method_name(line), eps, seed, metrics, time.time() - t, spent)
    plot(rows, output_dir / "frontier.png", f"{base.dataset}, {base.lenders} lenders, {partition}", base.model)
    (output_dir / "frontier.md").write_text(markdown(rows, command))
    return rows


BASELINES = ("hgb", "pooled", "local_mean", "local_worst")


def method_name(cfg: RunConfig) -> str:
    """A federated line's label: "gbdt" for the boosted trees, else the aggregation strategy (fedavg, ...)."""
    return "gbdt" if cfg.model == "gbdt" else cfg.strategy


def markdown(rows: list[dict], command: str) -> str:
    """Mean and spread over seeds per method and epsilon, with the command that produced them."""
    import flwr

    stats = summarize(rows)
    pooled_auc = stats.get(("pooled", math.inf), (math.nan,))[0]
    limit = stats.get(("hgb", math.inf), (math.nan,))[0]
    spent: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        if r["epsilon_spent_max"] not in ("", None):
            spent.setdefault((r["method"], float(r["epsilon"])), []).append(float(r["epsilon_spent_max"]))
    lines = [
        f"Command: `{command}`" if command else "",
        "",
        f"Flower {flwr.__version__}, one torch thread. hgb: the best pooled model (the limit); pooled: the same model "
        "as the federation, trained centrally (for gbdt the same family is hgb: its gap to it is in both columns).",
        "",
        "| method | epsilon | AUC mean | AUC sd | vs best pooled (hgb) | vs pooled, same model | max epsilon spent | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {name: i for i, name in enumerate(BASELINES)}
    for (method, eps), (mean, sd, n) in sorted(stats.items(), key=lambda kv: (order.get(kv[0][0], 4), kv[0])):
        used = f"{max(spent[(method, eps)]):.3f}" if (method, eps) in spent else "-"
        gap = "-" if math.isnan(limit) else f"{mean - limit:+.4f}"
        family = limit if method == "gbdt" else pooled_auc
        same = "-" if math.isnan(family) else f"{mean - family:+.4f}"
        lines.append(
            f"| {method} | {'none' if math.isinf(eps) else f'{eps:g}'} | {mean:.4f} | {sd:.4f} | {gap} | "
            f"{same} | {used} | {n} |"
        )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict]) -> None:
    write_atomically(path, csv_text(COLUMNS, rows))


def summarize(rows: list[dict]) -> dict[tuple[str, float], tuple[float, float, int]]:
    """(method, epsilon) -> (mean AUC, sd AUC, seeds)."""
    groups: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["epsilon"])), []).append(float(r["auc"]))
    return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in groups.items()}


def plot(rows: list[dict], path: Path, title: str, pooled_model: str = "the federation's model") -> None:
    """`pooled_model`: the model of the "pooled" line (the first federated line's: a gbdt line's own family is hgb)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarize(rows)
    methods = sorted({m for m, _ in stats if m not in BASELINES}, key=lambda m: (m == "gbdt", m))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    epsilon_ticks: set[float] = set()
    for i, method in enumerate(methods):
        color = f"C{[0, 2, 4, 5][i % 4]}"
        fed = sorted((eps, v) for (m, eps), v in stats.items() if m == method)
        finite = [(eps, v) for eps, v in fed if math.isfinite(eps)]
        if finite:
            xs = [e for e, _ in finite]
            epsilon_ticks.update(xs)
            means = np.array([v[0] for _, v in finite])
            sds = np.array([v[1] for _, v in finite])
            ax.plot(xs, means, "o-", color=color, label=f"federated {method}, DP (mean over seeds)")
            ax.fill_between(xs, means - sds, means + sds, color=color, alpha=0.2, label=f"{method}: +/- 1 sd")
        nodp = [v for eps, v in fed if math.isinf(eps)]
        if nodp:
            ax.axhline(nodp[0][0], color=color, ls=":", label=f"federated {method}, no DP")
    if ("hgb", math.inf) in stats:
        ax.axhline(stats[("hgb", math.inf)][0], color="k", ls="-", label="best pooled model (HGB), no DP")
    if ("pooled", math.inf) in stats:
        ax.axhline(stats[("pooled", math.inf)][0], color="k", ls="--", label=f"pooled {pooled_model}, no DP")
    if ("local_mean", math.inf) in stats:
        ax.axhline(stats[("local_mean", math.inf)][0], color="C3", ls="-.", label="local only, mean of lenders")
    ax.set_xscale("log")
    if epsilon_ticks:
        ax.set_xticks(sorted(epsilon_ticks), [f"{e:g}" for e in sorted(epsilon_ticks)])
        ax.minorticks_off()
    ax.set_xlabel("epsilon per lender (log scale)")
    ax.set_ylabel("AUC on the pooled held-out test")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
