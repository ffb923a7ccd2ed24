"""Secure-aggregation cost: the same run with and without --secure-aggregation, side by side in one
process, on the in-process Grid (so the figure is the protocol's cost, not an engine's).

    python -m benchmarks.perf.secagg_cost [--lenders 10] [--model mlp] [--repeats 3]

Prints seconds per round (median over rounds and repeats) and bytes the lenders sent per round, for
each setting, and their ratio. Data caches are warmed first so both sides measure the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.perf.common import machine, quiet
from federation.config import RunConfig


def round_seconds(cfg: RunConfig, folder: Path) -> tuple[list[float], int]:
    from fedcredit.runner import run

    out = run(cfg.replace(output_dir=str(folder)), on_round=lambda s: None)
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    entries = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    sent = sum(e["body"]["bytes_sent"] for e in entries if e["type"] == "lender_update")
    return [r["seconds"] for r in rounds], sent // cfg.rounds


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lenders", type=int, default=10)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    quiet()
    base = RunConfig(
        records=args.records, lenders=args.lenders, rounds=args.rounds, model=args.model, engine="inprocess"
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        round_seconds(base.replace(rounds=1), Path(tmp) / "warm")
        for secure in (False, True):
            seconds, sent = [], 0
            for repeat in range(args.repeats):
                got, sent = round_seconds(base.replace(secure_aggregation=secure), Path(tmp) / f"{secure}-{repeat}")
                seconds += got
            results[secure] = (statistics.median(seconds), sent)
    (plain, plain_bytes), (secured, secure_bytes) = results[False], results[True]
    table = "\n".join(
        [
            f"Machine: {machine()}. Command: python -m benchmarks.perf.secagg_cost --lenders {args.lenders} "
            f"--records {args.records} --rounds {args.rounds} --model {args.model} --repeats {args.repeats}",
            "",
            "| setting | seconds per round (median) | update bytes sent by lenders per round (ledger; keys and shares not counted) |",
            "|---|---|---|",
            f"| plain FedAvg | {plain:.3f} | {plain_bytes:,} |",
            f"| secure aggregation | {secured:.3f} | {secure_bytes:,} |",
            f"| ratio | {secured / plain:.2f}x | {secure_bytes / plain_bytes:.2f}x |",
        ]
    )
    print(table)
    return table


if __name__ == "__main__":
    main()
