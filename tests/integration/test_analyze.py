"""`asteroid analyze` end to end: the report of a rollout-like file against its reference, its bad input, and the
GFN2-xTB energies it compares."""

import json

import numpy as np
import pytest

from asteroid import cli
from asteroid.analysis import energy_comparison
from asteroid.data import load_trajectory

from helpers import ETHANOL_Z, vibrating

DT = 0.5


@pytest.fixture(scope="module")
def reference():
    return vibrating()


@pytest.fixture
def files(reference, tmp_path):
    """A reference npz (0.5 fs) and a rollout-like npz of two trajectories 1 fs apart that are the true frames."""
    ref = tmp_path / "ref.npz"
    np.savez(ref, R=reference[:600], z=ETHANOL_Z, dt_fs=DT)
    starts = np.array([100, 250])
    true = np.stack([reference[s + 2 : s + 2 + 2 * 120 : 2] for s in starts])  # (2, 120, 9, 3): stride 2, after start
    pred = tmp_path / "pred.npz"
    np.savez(pred, R=true, z=ETHANOL_Z, dt_fs=1.0, start_frame=starts, source=str(ref))
    return pred, ref


@pytest.mark.parametrize(
    "problem, message",
    [
        ("atoms", "9 atoms, but the reference"),
        ("z", "differ from those of the reference"),
        ("frames", "the reference distributions need at least 10"),
        ("missing", "no such file"),
    ],
)
def test_analyze_refuses_bad_input_in_one_line(files, tmp_path, capsys, problem, message):
    pred, ref = files
    bad = tmp_path / "bad.npz"
    R = load_trajectory(ref).R
    if problem == "atoms":
        np.savez(bad, R=R[:, :5], z=ETHANOL_Z[:5], dt_fs=DT)
    elif problem == "z":
        np.savez(bad, R=R, z=ETHANOL_Z[::-1], dt_fs=DT)
    elif problem == "frames":
        np.savez(bad, R=R[:5], z=ETHANOL_Z, dt_fs=DT)
    assert cli.main(["analyze", str(pred), "--reference", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asteroid: error: ") and message in err and "\n" not in err
    assert str(bad) in err or str(pred) in err


def test_analyze_end_to_end(files, tmp_path, capsys):
    pred, ref = files
    out = tmp_path / "analysis"
    assert cli.main(["analyze", str(pred), "--reference", str(ref), "--out", str(out)]) == 0
    assert "coordinate error against the continuation (120 frames)" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["predicted"]["trajectories"] == 2 and report["predicted"]["dt_fs"] == 1.0
    # start_frame and the 2-frame stride picked exactly the frames that were predicted
    assert max(report["coordinate_error"]["rmsd"]) < 1e-6
    assert (out / "bond_length.png").is_file()
    # an explicit --start overrides the file's: other frames, a real error
    assert cli.main(["analyze", str(pred), "--reference", str(ref), "--out", str(out), "--start", "0", "1"]) == 0
    assert min(json.loads((out / "report.json").read_text())["coordinate_error"]["rmsd"]) > 0.01


def test_gfn2_energies_of_a_water_molecule():
    water = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.467], [0.0, -0.757, -0.467]])
    frames = np.stack([water + [[0, 0, 0.01 * k], [0, 0, 0], [0, 0, 0]] for k in range(5)])  # (5, 3, 3)
    z = np.array([8, 1, 1])
    energy = energy_comparison(frames[None], z, frames, samples=5)
    assert energy["samples"] == 5 and energy["failed"] == 0 and energy["reference_count"] == 5
    # the same two frames on both sides: GFN2-xTB water is about -5.07 Hartree = -3183 kcal/mol
    assert energy["predicted_mean"] == pytest.approx(energy["reference_mean"]) and energy["jsd"] == 0.0
    assert -3250 < energy["reference_mean"] < -3100 and energy["reference_std"] > 0
    given = energy_comparison(frames[None], z, frames, samples=5, reference_energies=np.array([-3180.0, -3190.0]))
    assert given["reference_mean"] == -3185.0 and "file" in given["reference_source"]
