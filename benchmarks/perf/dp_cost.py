"""DP cost: DP-SGD (Opacus, and the closed form of federation/fast_dp_sgd.py) vs non-private training, side by side.

    python -m benchmarks.perf.dp_cost [--records 20000] [--repeats 5]

Same data, model, batch size, epochs and learning rate; the only difference is DP-SGD (Poisson
sampling, per-example clipping, Gaussian noise from the CSPRNG), with the clipped sum from Opacus' per-example
gradients or from the closed form that train_local uses for the built-in models. Prints records per second and
the ratios DP/plain (target >= 0.8x for the closed form), as medians over interleaved repeats in this one process.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from benchmarks.perf.common import machine, quiet, timed
from federation.model import build_model
from federation.privacy.noise import SecureRandomness
from federation.training import DPSettings, train_local


def measure(records: int, repeats: int, model_name: str, features: int = 23, batch_size: int = 64) -> dict:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(records, features)).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=records) > 0.8).astype(np.float32)

    def plain():
        train_local(
            build_model(model_name, features, 32, seed=0),
            x,
            y,
            epochs=1,
            batch_size=batch_size,
            learning_rate=0.1,
            seed=0,
        )

    def private(per_sample: str):
        train_local(
            build_model(model_name, features, 32, seed=0),
            x,
            y,
            epochs=1,
            batch_size=batch_size,
            learning_rate=0.1,
            seed=0,
            dp=DPSettings(1.0, 1.0, SecureRandomness(), per_sample=per_sample),
        )

    def opacus():
        private("opacus")

    def closed_form():
        private("closed-form")

    plain(), opacus(), closed_form()  # warm up (imports, first-call costs)
    # interleaved (plain, Opacus, closed form, plain, ...), so that other load on a shared machine falls on all three
    times: dict[str, list[float]] = {"plain": [], "opacus": [], "fast": []}
    for _ in range(repeats):
        for key, fn in (("plain", plain), ("opacus", opacus), ("fast", closed_form)):
            times[key].append(timed(fn, 1)[0])
    t_plain, t_opacus, t_fast = (statistics.median(times[key]) for key in ("plain", "opacus", "fast"))
    return {
        "model": model_name,
        "records": records,
        "plain_rps": records / t_plain,
        "opacus_rps": records / t_opacus,
        "fast_rps": records / t_fast,
        "opacus_ratio": t_plain / t_opacus,
        "fast_ratio": t_plain / t_fast,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    quiet()
    print(f"machine: {machine()}", end="\n\n")
    print(
        "| model | records | plain records/s | DP-SGD Opacus records/s | DP-SGD closed form records/s "
        "| Opacus / plain | closed form / plain |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("logreg", "mlp"):
        r = measure(args.records, args.repeats, name)
        print(
            f"| {r['model']} | {r['records']} | {r['plain_rps']:,.0f} | {r['opacus_rps']:,.0f} | {r['fast_rps']:,.0f} "
            f"| {r['opacus_ratio']:.2f}x | {r['fast_ratio']:.2f}x |"
        )


if __name__ == "__main__":
    main()
