import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "data"
SHARED = (ROOT / ".." / "shared" / "datasets").resolve()

os.environ.setdefault("FLWR_HOME", str(ROOT / ".flwr"))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the processes the tests start (deployment, kill -9)

from federation.training import set_torch_threads  # noqa: E402

set_torch_threads()


@pytest.fixture
def fixture_dir(tmp_path):
    """A data directory laid out like ../shared/datasets, holding the small fixture files.

    Returns a function: fixture_dir(name, form=None) copies fixtures/<form or name> to <tmp>/<name>.
    """

    def make(name: str, form: str | None = None) -> Path:
        root = tmp_path / "data"
        shutil.copytree(FIXTURES / (form or name), root / name)
        return root

    return make


def shared_or_skip(name: str) -> Path:
    if not (SHARED / name).is_dir():
        pytest.skip(f"real dataset {name} not found at {SHARED} (the shared datasets are absent on this machine)")
    return SHARED
