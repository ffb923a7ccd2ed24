"""Federation cost: the default run through Flower vs the same local training done sequentially in
one process without Flower, side by side in one process.

    python -m benchmarks.perf.federation_cost [--repeats 3] [--ray]

"Flower, in-process": the real ServerApp and ClientApp on fedcredit's in-process Grid (messages go
through Flower's protobuf wire format; no engine start). "Sequential": the same lenders, data, DP-SGD
steps and FedAvg average in a plain loop: no messages, no manifests, no ledger, no report. With
--ray, one run on Flower's Ray simulation runtime is timed too (engine start included). Medians of
--repeats runs, the two paths alternated; data caches are warmed first so both sides measure training, not CSV
parsing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.perf.common import machine, quiet, timed
from federation.config import RunConfig
from federation.data import load_lender
from federation.metrics import credit_metrics
from federation.model import build_model, get_arrays, predict_proba, set_arrays
from federation.privacy.accountant import calibrate_noise, default_delta, sample_rate, steps_per_epoch
from federation.privacy.noise import SecureRandomness
from federation.training import DPSettings, train_local


def sequential(cfg: RunConfig) -> None:
    """Rounds of local DP-SGD and a weighted average, with nothing else."""
    lenders = [load_lender(cfg, i) for i in range(cfg.lenders)]
    global_model = build_model(cfg.model, len(lenders[0].features), cfg.hidden, seed=cfg.seed)
    sigmas = []
    for d in lenders:
        n = len(d.y_train)
        steps = cfg.local_epochs * steps_per_epoch(n, cfg.batch_size)
        sigmas.append(
            calibrate_noise(cfg.epsilon, default_delta(n), sample_rate(n, cfg.batch_size), cfg.rounds * steps)
        )
    for rnd in range(1, cfg.rounds + 1):
        updates, weights = [], []
        for i, d in enumerate(lenders):
            model = build_model(cfg.model, len(d.features), cfg.hidden)
            set_arrays(model, get_arrays(global_model))
            train_local(
                model,
                d.x_train,
                d.y_train,
                epochs=cfg.local_epochs,
                batch_size=cfg.batch_size,
                learning_rate=cfg.learning_rate,
                seed=cfg.seed + i + rnd,
                dp=DPSettings(sigmas[i], cfg.clip_norm, SecureRandomness()) if cfg.dp else None,
            )
            updates.append(get_arrays(model))
            weights.append(len(d.y_train))
        total = sum(weights)
        set_arrays(
            global_model,
            {k: np.asarray(sum(w * u[k] for w, u in zip(weights, updates, strict=False)) / total) for k in updates[0]},
        )
        for d in lenders:
            credit_metrics(d.y_test, predict_proba(global_model, d.x_test))


def flower(cfg: RunConfig, engine: str) -> None:
    from fedcredit.runner import run

    with tempfile.TemporaryDirectory() as tmp:
        run(cfg.replace(engine=engine, output_dir=str(Path(tmp) / "run")), on_round=lambda s: None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--lenders", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ray", action="store_true", help="also time one run on Flower's Ray simulation runtime")
    args = parser.parse_args(argv)
    quiet()
    cfg = RunConfig(records=args.records, lenders=args.lenders, rounds=args.rounds)
    sequential(cfg)  # warm caches and imports
    flower(cfg, "inprocess")
    # Alternated, one pair at a time: the machine's speed drifts by more than the difference measured (the
    # sequential loop's median moved 0.28-0.60 s between runs of this script), and a pair sees the same drift.
    pairs = [
        (timed(lambda: sequential(cfg), 1)[0], timed(lambda: flower(cfg, "inprocess"), 1)[0])
        for _ in range(args.repeats)
    ]
    t_seq = statistics.median(s for s, _ in pairs)
    t_fl = statistics.median(f for _, f in pairs)
    ratios = sorted(f / s for s, f in pairs)
    print(
        f"machine: {machine()}; {cfg.lenders} lenders, {cfg.records} records, {cfg.rounds} rounds, DP epsilon {cfg.epsilon:g}",
        end="\n\n",
    )
    print("| path | seconds (median) | ratio to sequential |")
    print("|---|---:|---:|")
    print(f"| sequential, no Flower | {t_seq:.2f} | 1.00x |")
    print(f"| Flower ServerApp + ClientApp, in-process Grid | {t_fl:.2f} | {t_fl / t_seq:.2f}x |")
    print(
        f"\nper pair (sequential then in-process, {len(pairs)} pairs): ratio median "
        f"{statistics.median(ratios):.2f}x, {ratios[0]:.2f}-{ratios[-1]:.2f}x"
    )
    if args.ray:
        start = time.perf_counter()
        flower(cfg, "simulation")
        t_ray = time.perf_counter() - start
        print(f"| Flower simulation runtime (Ray), 1 run, engine start included | {t_ray:.2f} | {t_ray / t_seq:.2f}x |")


if __name__ == "__main__":
    main()
