"""RESULTS.md and plots from a bench results.csv (every number in them comes from that file)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

FED = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "gbdt")
EPS_ORDER = ("1", "3", "8", "inf")


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.mean(values) if values else math.nan


def _sd(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _eps_label(e: str) -> str:
    return "none" if e == "inf" else e


def summarize(rows: list[dict]) -> dict:
    """(dataset, partition, method, epsilon) -> per-seed pooled-test AUCs, and per-(seed, lender) own-test AUCs."""
    pooled_test: dict = defaultdict(lambda: defaultdict(list))  # key -> seed -> aucs (local: one per lender)
    own_test: dict = defaultdict(dict)  # key -> (seed, lender) -> auc
    ks: dict = defaultdict(list)
    for r in rows:
        key = (r["dataset"], r["partition"], r["method"], r["epsilon"])
        if r["test_set"] == "pooled":
            pooled_test[key][r["seed"]].append(_f(r["auc"]))
            ks[key].append(_f(r["ks"]))
        else:
            own_test[key][(r["seed"], r["lender"])] = _f(r["auc"])
    return {"pooled": pooled_test, "own": own_test, "ks": ks}


def _headline_partition(rows: list[dict], dataset: str) -> str:
    partitions = sorted({r["partition"] for r in rows if r["dataset"] == dataset})
    return "dirichlet(0.5)" if "dirichlet(0.5)" in partitions else partitions[0]


def _auc(s: dict, key: tuple) -> float:
    """Mean over seeds of the pooled-test AUC of one (dataset, partition, method, epsilon)."""
    return _mean([_mean(v) for v in s["pooled"].get(key, {}).values()])


def _gap(auc: float, limit: float) -> str:
    return "-" if math.isnan(auc) or math.isnan(limit) else f"{auc - limit:+.4f}"


def limits_table(rows: list[dict]) -> list[str]:
    """Per dataset: the best pooled model (the limit), the same-family pooled model, and local-only training."""
    s = summarize(rows)
    lines = [
        "| dataset | partition | best pooled: HGB (the limit) | pooled, same model as the federation | "
        "local only, mean of lenders | local only, worst lender | seeds (HGB / pooled) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for dataset in sorted({r["dataset"] for r in rows}):
        partition = _headline_partition(rows, dataset)
        hgb, pooled = (_auc(s, (dataset, partition, m, "inf")) for m in ("hgb", "pooled"))
        local = s["pooled"].get((dataset, partition, "local", "inf"), {})
        local_mean = _mean([_mean(v) for v in local.values()])
        local_worst = _mean([min(v) for v in local.values() if v])
        seeds = " / ".join(str(len(s["pooled"].get((dataset, partition, m, "inf"), {}))) for m in ("hgb", "pooled"))
        lines.append(
            f"| {dataset} | {partition} | {_num(hgb)} | {_num(pooled)} | {_num(local_mean)} | {_num(local_worst)} | "
            f"{seeds} |"
        )
    return lines


def _num(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.4f}"


def headline(rows: list[dict]) -> list[str]:
    """Per dataset and federated method: AUC at each epsilon, its gap to the best pooled model (HGB) and to the
    pooled model of the same family (pooled training of the same network; for gbdt, HGB itself), and how many
    lenders score at least as well on their own test with the federated model as with their own local one."""
    s = summarize(rows)
    lines = [
        "| dataset | method | "
        + " | ".join(f"eps {_eps_label(e)}: AUC (vs limit / vs same family)" for e in EPS_ORDER)
        + " | lenders beating own local: "
        + " / ".join(_eps_label(e) for e in EPS_ORDER)
        + " | seeds |",
        "|---|---|" + "---:|" * len(EPS_ORDER) + "---|---|",
    ]
    for dataset in sorted({r["dataset"] for r in rows}):
        partition = _headline_partition(rows, dataset)
        limit = _auc(s, (dataset, partition, "hgb", "inf"))
        own_local = s["own"].get((dataset, partition, "local", "inf"), {})
        for method in FED:
            keys = [(dataset, partition, method, e) for e in EPS_ORDER]
            if not any(k in s["pooled"] for k in keys):
                continue
            family = limit if method == "gbdt" else _auc(s, (dataset, partition, "pooled", "inf"))
            cells, shares = [], []
            for key in keys:
                auc = _auc(s, key)
                cells.append("-" if math.isnan(auc) else f"{auc:.4f} ({_gap(auc, limit)} / {_gap(auc, family)})")
                own_fed = s["own"].get(key, {})
                pairs = [
                    (own_fed[k], own_local[k])
                    for k in own_fed
                    if k in own_local and not math.isnan(own_fed[k]) and not math.isnan(own_local[k])
                ]
                shares.append(f"{sum(fed >= local for fed, local in pairs)}/{len(pairs)}" if pairs else "-")
            seeds = max(len(s["pooled"].get(k, {})) for k in keys)
            lines.append(
                f"| {dataset} | {method} | " + " | ".join(cells) + " | " + " / ".join(shares) + f" | {seeds} |"
            )
    return lines


def full_table(rows: list[dict]) -> list[str]:
    s = summarize(rows)
    lines = [
        "| dataset | partition | method | epsilon | AUC pooled test (mean +/- sd over seeds) | KS pooled test | "
        "mean AUC on lenders' own tests | seeds |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    order = {m: i for i, m in enumerate(("hgb", "pooled", "local", *FED))}
    for key in sorted(
        s["pooled"], key=lambda k: (k[0], k[1], order.get(k[2], 9), EPS_ORDER.index(k[3]) if k[3] in EPS_ORDER else 9)
    ):
        per_seed = [_mean(v) for v in s["pooled"][key].values()]
        own = _mean(list(s["own"].get(key, {}).values()))
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {_eps_label(key[3])} | {_mean(per_seed):.4f} +/- {_sd(per_seed):.4f} | "
            f"{_mean(s['ks'][key]):.4f} | {own:.4f} | {len(per_seed)} |"
        )
    return lines


def results_markdown(rows: list[dict], command: str, skipped: dict[str, str] | None = None) -> str:
    import flwr

    out = ["# fedcredit benchmark results", ""]
    if command:
        out += ["Produced by:", "", "```bash", command, "```", ""]
    out += [f"Flower {flwr.__version__}, one torch thread.", ""]
    out += [f"Skipped: {method}: {why}." for method, why in (skipped or {}).items()]
    out += [""] if skipped else []
    out += [
        "Generated from results.csv (one row per dataset, partition, method, epsilon, seed and lender). "
        "Pooled test: the pooled held-out split no method trains on; own test: each lender's own test split. "
        "Local-only rows on the pooled test are per lender (mean and worst below). Pooled and local-only "
        "training are non-private; epsilon is per lender, record level.",
        "",
        "## The limit: the best pooled model",
        "",
        "HGB: scikit-learn's HistGradientBoostingClassifier, tuned on a validation fifth of the pooled training "
        "records (benchmarks/search.py), trained on the same pooled training records as `pooled` and scored on the "
        "same held-out test. Pooled: the federation's model family (logreg or mlp) trained centrally for the same "
        "rounds x local epochs, with its own optimizer searched without DP (benchmarks/constants.py `pooled`).",
        "",
        *limits_table(rows),
        "",
        "## Headline: every federated method against the limit",
        "",
        "Each cell: pooled-test AUC (mean over seeds), then its gap to the best pooled model (HGB) and to the pooled "
        "model of the same family (the same network trained centrally; for gbdt, HGB). Epsilon per lender, record "
        "level, no secure aggregation.",
        "",
        *headline(rows),
        "",
        "## All cells",
        "",
        *full_table(rows),
    ]
    return "\n".join(out) + "\n"


def write_results_md(rows: list[dict], command: str, path: Path, skipped: dict[str, str] | None = None) -> None:
    """RESULTS.md from the bench rows; then the cells measured under a trust assumption, each folder
    `results/gbdt_secure_*` (its README's first section: its own command, setting and table); then the performance
    results the perf scripts left in `results/perf_*.md` beside it (each with its own command and machine)."""
    text = results_markdown(rows, command, skipped)
    secure = sorted((path.parent / "results").glob("gbdt_secure_*/README.md"))
    if secure:
        text += (
            "\n## Under secure aggregation: a trust assumption (benchmarks/results/gbdt_secure_*)\n\n"
            "The cells above trust no one: each lender adds its full noise. These trust the secure aggregation and that "
            "no lender colludes with the coordinator; each folder's README says what else it holds.\n\n"
            + "\n".join(f"### {p.parent.name}\n\n{_first_section(p.read_text())}\n" for p in secure)
        )
    perf = sorted((path.parent / "results").glob("perf_*.md"))
    if perf:
        text += "\n## Performance (benchmarks/perf)\n\n" + "\n".join(
            f"### {p.stem}\n\n{p.read_text().strip()}\n" for p in perf
        )
    path.write_text(text)


def _first_section(markdown: str) -> str:
    """A README's text from after its title to its first second-level heading."""
    lines = markdown.strip().splitlines()
    body = lines[1:] if lines and lines[0].startswith("# ") else lines
    end = next((i for i, line in enumerate(body) if line.startswith("## ")), len(body))
    return "\n".join(body[:end]).strip()


def plots(rows: list[dict], output_dir: Path) -> list[Path]:
    """One PNG per dataset: pooled-test AUC of each strategy against epsilon, one panel per partition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarize(rows)
    written = []
    for dataset in sorted({r["dataset"] for r in rows}):
        partitions = sorted({r["partition"] for r in rows if r["dataset"] == dataset})
        fig, axes = plt.subplots(1, len(partitions), figsize=(4.2 * len(partitions), 4.2), squeeze=False)
        for ax, partition in zip(axes[0], partitions, strict=False):
            for i, method in enumerate(FED):
                points = [
                    (j, _mean([_mean(v) for v in s["pooled"][(dataset, partition, method, e)].values()]))
                    for j, e in enumerate(EPS_ORDER)
                    if (dataset, partition, method, e) in s["pooled"]
                ]
                if points:
                    ax.plot(*zip(*points, strict=False), "o-", color=f"C{i}", label=method)
            for method, style, color in (("hgb", "-", "k"), ("pooled", "--", "k"), ("local", "-.", "C3")):
                if (dataset, partition, method, "inf") in s["pooled"]:
                    ax.axhline(
                        _mean([_mean(v) for v in s["pooled"][(dataset, partition, method, "inf")].values()]),
                        ls=style,
                        color=color,
                        label={"hgb": "best pooled: HGB (no DP)", "pooled": "pooled, same model (no DP)"}.get(
                            method, "local-only mean"
                        ),
                    )
            ax.set_xticks(range(len(EPS_ORDER)), [_eps_label(e) for e in EPS_ORDER])
            ax.set_xlabel("epsilon per lender")
            ax.set_title(partition, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("AUC, pooled held-out test")
        # one legend for every panel, below them: inside a panel it covered the curves in the middle
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
        fig.suptitle(dataset)
        fig.tight_layout(rect=(0, 0.02 + 0.045 * -(-len(labels) // 3), 1, 1))
        path = output_dir / f"auc_{dataset}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
