"""The Python API (fedcredit/api.py): a run returns a RunResult (paths, the summary, the lenders as a DataFrame),
prints nothing of Flower's unless asked, and each of Flower's lines once when asked; bad input raises before
anything is written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import flwr.common.logger  # noqa: F401  (here, not in a test: its handler keeps the stream it finds on import)
import pandas as pd
import pytest

from fedcredit import api
from federation.config import RunConfig
from federation.errors import ConfigError
from federation.run_summary import LENDER_FIELDS

SMALL = {"records": 3000, "lenders": 2, "rounds": 1}


@contextmanager
def _log_streams() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """What Flower's own handler and the root logger's stream handlers print, meanwhile. (Their streams are swapped:
    each keeps the one it found when it was made, which pytest's capture does not see.)"""
    flower, root = io.StringIO(), io.StringIO()
    swapped = [(h, flower) for h in logging.getLogger("flwr").handlers if isinstance(h, logging.StreamHandler)]
    swapped += [(h, root) for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    assert any(s is flower for _, s in swapped) and any(s is root for _, s in swapped)  # as in any run with Opacus
    before = [(h, h.setStream(stream)) for h, stream in swapped]
    try:
        yield flower, root
    finally:
        for handler, stream in before:
            handler.setStream(stream)


def test_run_returns_the_result_and_keeps_flower_quiet(tmp_path):
    flwr_logger = logging.getLogger("flwr")
    before = flwr_logger.level
    lines: list[str] = []
    with _log_streams() as (flower, root):
        result = api.run(RunConfig(**SMALL, output_dir=str(tmp_path / "run")), progress=lines.append)
    assert "INFO" not in flower.getvalue() + root.getvalue()  # Flower logs each message exchange at INFO
    assert lines == [line for line in lines if line.startswith("round 1: global AUC")] and len(lines) == 1
    assert result.run_dir == tmp_path / "run" and result.report == tmp_path / "run" / "report.html"
    assert result.report.is_file()
    assert list(result.lenders.columns) == list(LENDER_FIELDS) and result.lenders.lender.dtype == "int64"
    assert list(result.lenders.lender) == [0, 1]
    for row in result.lenders.itertuples():
        manifest = json.loads((result.run_dir / "manifests" / f"lender_{row.lender:03d}.json").read_text())
        assert row.train_records == manifest["train_records"]
    metrics = pd.read_csv(result.run_dir / "metrics.csv")
    final = metrics[metrics.scope == "global"].iloc[-1]
    assert result.summary["final_metrics"]["auc"] == pytest.approx(final.auc, rel=1e-12)
    assert result.summary["rounds_completed"] == 1
    again = api.load(result.run_dir)  # the same result for the folder, read again
    assert again.summary == result.summary and again.lenders.equals(result.lenders)
    assert flwr_logger.level == before and not flwr_logger.propagate  # Flower's level as it was, lines once


def test_flower_lines_when_asked_are_printed_once(tmp_path):
    """Flower's handler prints its lines; the root logger's handlers (Opacus installs one) print none of them,
    which would be each line a second time."""
    with _log_streams() as (flower, root):
        api.run({"records": 3000, "lenders": 2, "rounds": 1, "output-dir": str(tmp_path / "run")}, None, logging.INFO)
    assert "configure_train" in flower.getvalue()  # asked for, shown
    assert "configure_train" not in root.getvalue() and "INFO" not in root.getvalue(), root.getvalue()


def test_bad_input_raises_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="unknown partition 'diagonal'"):
        api.run({"partition": "diagonal", "output-dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match="unknown configuration key 'colour'"):
        api.run({"colour": "blue", "output-dir": str(tmp_path / "run")})
    assert list(tmp_path.iterdir()) == []
