"""The run folder: written into a staging folder and moved into place only when complete.

A failed run leaves nothing behind; a finished one holds config.json, metrics.csv, epsilon.csv,
privacy_events.jsonl, privacy.json, manifests/, model.pt, model.json and rounds.jsonl.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Literal

# Both CSVs key a row by (round, scope, lender): `lender` is always a lender's integer id, empty on the rows that
# are about no single lender (scope `global`: the weighted mean over lenders; scope `federation`: lender-level DP),
# so `pandas.merge(metrics, epsilon, on=["lender", "round"])` joins them as read (README, "The run folder").
LENDER_SCOPE, GLOBAL_SCOPE, FEDERATION_SCOPE = "lender", "global", "federation"
METRICS_COLUMNS = ["round", "scope", "lender", "num_examples", "auc", "ks", "gini", "brier", "loss"]
EPSILON_COLUMNS = [
    "round",
    "scope",
    "lender",
    "epsilon",
    "delta",
    "sigma",
    "sample_rate",
    "steps",
    "budget",
    "declined",
    "granularity",
    "sampled",
]


def write_atomically(path: str | Path, data: bytes | str) -> None:
    """Write `path` whole or not at all: a crash leaves the previous file (or none), never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def csv_text(columns: list[str], rows: list[dict], extrasaction: Literal["raise", "ignore"] = "raise") -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction=extrasaction)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")


class RunFolder:
    """Files go to `<target>.partial-<pid>`; `commit()` renames it to `target`; `abort()` removes it."""

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target).resolve()
        if self.target.exists() and any(self.target.iterdir()):
            from federation.errors import ConfigError

            raise ConfigError(f"output folder {self.target} already exists and is not empty")
        self.staging = self.staging_for(self.target)
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)

    @staticmethod
    def staging_for(target: str | Path) -> Path:
        """The staging folder this process writes `target` into."""
        target = Path(target).resolve()
        return target.parent / f".{target.name}.partial-{os.getpid()}"

    @classmethod
    def adopt(cls, target: str | Path) -> RunFolder:
        """Take over the staging folder a killed run left behind (for --resume)."""
        from federation.errors import ConfigError

        target = Path(target).resolve()
        if target.exists():
            raise ConfigError(f"{target} is a finished run: there is nothing to resume")
        left = sorted(target.parent.glob(f".{target.name}.partial-*"), key=lambda p: p.stat().st_mtime)
        if not left:
            raise ConfigError(f"no unfinished run for {target} (no {target.parent}/.{target.name}.partial-* folder)")
        folder = cls.__new__(cls)
        folder.target = target
        folder.staging = cls.staging_for(target)
        if left[-1] != folder.staging:
            left[-1].rename(folder.staging)
        return folder

    def path(self, name: str) -> Path:
        p = self.staging / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_json(self, name: str, data: object) -> None:
        self.path(name).write_text(json.dumps(data, indent=2, sort_keys=True, default=_plain) + "\n")

    def write_csv(self, name: str, columns: list[str], rows: list[dict]) -> None:
        self.path(name).write_text(csv_text(columns, rows, extrasaction="ignore"))

    def commit(self) -> Path:
        if self.target.exists():
            self.target.rmdir()  # empty, checked in __init__
        self.staging.rename(self.target)
        return self.target

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _plain(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_csv_rows(path: str | Path) -> list[dict]:
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))
