"""Taiwan's gbdt setting under secure aggregation: depth and number of trees re-chosen for the noise the bench's
secure cells carry.

    python -m benchmarks.gbdt_secure_tuning --data-dir ../shared/datasets

The headline's gbdt constants (benchmarks/constants.py) were chosen with each lender adding the full noise
(gbdt_tuning_full_noise.md). Under secure aggregation with no colluder the coordinator sees only the sum, whose
noise is sqrt(t) times smaller (each lender z / sqrt(t) instead of z: 1.29 z on the sum of 10 against 3.16 z),
so a larger model pays off: more rounds and deeper trees cost noise per
release but raise what the model can reach. This search keeps the headline's other choices (lambda 200, leaf clip
0.5, 32 bins, noisy-quantile split candidates; the earlier searches found lambda and clip ties within 0.001) and
tries depth x (trees per round, rounds).

The noise is the bench's secure cells' (benchmarks/results/gbdt_secure_taiwan: `--set secure-aggregation=true
--set secure-sum-colluders=0`): each of the k lenders adds z / sqrt(t) with t = k // 2 + 1 the roster's threshold
(federation/secagg.py `default_threshold`, federation/gbdt/leaf_sums.py `secure_noise_share`), so the sum carries
z sqrt(k / t).
Scored on validation slices of the training data only (benchmarks/gbdt_tuning.py `load`), and, since one
validation score moves by up to 0.007 from seed to seed, as the mean over partition seeds 0-2 and two structure and
noise seeds each, at epsilon 1 and 3. The pooled test is not scored here: the chosen setting's test figures come from
the bench itself (the command in gbdt_secure_taiwan/README.md). Writes results/gbdt_tuning_secure_bench.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from pathlib import Path

from benchmarks.bench import Cell, config_for
from benchmarks.constants import headline_split
from benchmarks.gbdt_tuning import Data, gbdt_auc, load
from federation.gbdt.boosting import GbdtParams
from federation.secagg import default_threshold
from federation.tree_model import gbdt_params

OUT = Path(__file__).parent / "results" / "gbdt_tuning_secure_bench.md"
COMMAND = "python -m benchmarks.gbdt_secure_tuning --data-dir ../shared/datasets"
# The headline's Taiwan gbdt cell (benchmarks/constants.py through the bench's own config_for): its boosting and lenders.
HEADLINE_CELL = config_for(Cell("taiwan_default", *headline_split("taiwan_default"), "gbdt", 3.0, 0))
HEADLINE = gbdt_params(HEADLINE_CELL)
LENDERS = HEADLINE_CELL.lenders
DEPTHS = (2, 3, 4)
BATCHES = ((10, 50), (10, 100), (20, 100), (10, 200))  # (trees per round, tree rounds)
PARTITION_SEEDS = (0, 1, 2)
NOISE_SEEDS = (0, 1)
EPSILONS = (1.0, 3.0)


def secure_sum_factor(lenders: int) -> float:
    """The sum's noise over z when each of `lenders` adds z / sqrt(t), t the roster's threshold: sqrt(lenders / t)."""
    return math.sqrt(lenders / default_threshold(lenders))


def secure_auc(data: Data, delta: float, params: GbdtParams, epsilon: float, seed: int) -> float:
    """Validation AUC of the boosting with the bench's secure-cell noise at `epsilon` per lender."""
    return gbdt_auc(data, delta, params, epsilon, True, seed, noise_factor=secure_sum_factor(len(data[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/datasets")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    started = time.time()
    validation = [load(args.data_dir, seed, validation=True) for seed in PARTITION_SEEDS]
    rows = []
    for depth in DEPTHS:
        for trees, rounds in BATCHES:
            params = dataclasses.replace(HEADLINE, depth=depth, trees_per_round=trees, rounds=rounds)
            scores = {
                eps: [secure_auc(d, delta, params, eps, s) for d, delta in validation for s in NOISE_SEEDS]
                for eps in EPSILONS
            }
            rows.append((params, {eps: statistics.mean(v) for eps, v in scores.items()}))
            print(depth, trees, rounds, {eps: round(m, 4) for eps, m in rows[-1][1].items()}, flush=True)
    write(Path(args.out), rows, time.time() - started)


def write(out: Path, rows: list[tuple[GbdtParams, dict[float, float]]], seconds: float) -> None:
    best = max(rows, key=lambda r: statistics.mean(r[1].values()))[0]
    lines = [
        "# Taiwan gbdt under secure aggregation: depth and trees chosen for the secure cells' noise",
        "",
        f"    {COMMAND}",
        "",
        "Validation AUC (20% of each lender's training records, pooled), mean over partition seeds "
        f"{', '.join(map(str, PARTITION_SEEDS))} and structure and noise seeds {', '.join(map(str, NOISE_SEEDS))} "
        f"each, with the bench's secure-cell noise (each of the {LENDERS} lenders adds z / "
        f"sqrt({default_threshold(LENDERS)}): the sum carries {secure_sum_factor(LENDERS):.2f} z). "
        f"Lambda {HEADLINE.reg_lambda:g}, leaf clip {HEADLINE.leaf_clip:g}, {HEADLINE.n_bins} bins, "
        f"{HEADLINE.split_candidates} split candidates (the headline's), learning rate {HEADLINE.learning_rate:g}. "
        f"{seconds / 60:.0f} minutes on one thread. The pooled test is not scored "
        "here (benchmarks/results/gbdt_secure_taiwan).",
        "",
        "| depth | trees per round | tree rounds | epsilon 1 | epsilon 3 | mean |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for params, means in rows:
        mark = " (chosen)" if params == best else ""
        lines.append(
            f"| {params.depth} | {params.trees_per_round} | {params.rounds}{mark} | {means[1.0]:.4f} | "
            f"{means[3.0]:.4f} | {statistics.mean(means.values()):.4f} |"
        )
    top = statistics.mean(dict(rows)[best].values())
    ties = [p for p, m in rows if p != best and top - statistics.mean(m.values()) < 0.001]
    lines += [
        "",
        "Within 0.001 of the chosen mean (a tie: one validation score moves by up to 0.007 between seeds): "
        + ("; ".join(f"depth {p.depth}, {p.trees_per_round} x {p.rounds}" for p in ties) or "none")
        + ". The chosen is the best mean, the rule of benchmarks/gbdt_tuning.py.",
        "",
        f"Chosen: depth {best.depth}, {best.trees_per_round} trees x {best.rounds} rounds; a run sets it with "
        f"`--set gbdt-depth={best.depth} --set gbdt-trees-per-round={best.trees_per_round} "
        f"--set rounds={best.rounds + 1}` (round 1 is the count release).",
        "",
    ]
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
