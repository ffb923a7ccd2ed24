"""`fedcredit run` prints its own lines only: no library warning (Flower's deprecations, Ray's notices, Python
warnings) reaches the user's terminal, on the default engine (the main job's) and on the simulation engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _output(tmp_path: Path, *engine: str) -> str:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fedcredit", "run", *engine]
    command += ["--records", "3000", "--lenders", "2", "--rounds", "2", "--output-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert (out / "config.json").exists()
    return output


def _warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if any(w in line for w in ("Warning", "WARNING", "DEPRECATED"))]


def test_a_default_run_prints_no_library_warning(tmp_path):
    output = _output(tmp_path)
    assert "engine inprocess" in output  # the default engine
    assert _warnings(output) == [], output


@pytest.mark.simulation
def test_a_simulation_run_prints_no_library_warning(tmp_path):
    output = _output(tmp_path, "--engine", "simulation")
    assert _warnings(output) == [], output
