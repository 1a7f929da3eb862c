import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import harmonic_frames, md_topology

# One thread, in this process and the commands it starts (the CLI's own choice steps aside for OMP_NUM_THREADS):
# many threads on tiny tensors are far slower, and runs compared bit for bit must share a thread count.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The folder decides the tier: everything under tests/integration/ is `integration` (`make test-unit` skips it)."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


PROJECT_RUNS = Path(__file__).resolve().parents[1] / "runs"


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_in_the_projects_runs():
    """Tests write their runs under their own temporary folders: `make test` leaves the project's runs/ as it was."""
    before = set(PROJECT_RUNS.glob("*/*")) if PROJECT_RUNS.is_dir() else set()
    yield
    after = set(PROJECT_RUNS.glob("*/*")) if PROJECT_RUNS.is_dir() else set()
    assert after <= before, f"tests wrote into the project's runs/: {sorted(map(str, after - before))}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def md_files(tmp_path):
    """The same trajectory (nm, 0.5 fs per frame) saved by mdtraj, with a one-frame .pdb topology."""
    import mdtraj as md

    R = harmonic_frames()  # Angstrom
    traj = md.Trajectory(R / 10.0, md_topology(), time=np.arange(60) * 0.0005)  # nm, ps
    traj[0].save_pdb(str(tmp_path / "top.pdb"))
    return traj, R, tmp_path
