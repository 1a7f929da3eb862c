"""`asteroid inspect`: the summary values and the printed report."""

import warnings

import numpy as np
import pytest

from asteroid.commands.inspect import main
from asteroid.data.summary import summarize
from asteroid.errors import DataError

from helpers import ETHANOL_Z, harmonic_frames, save_sgdml, shuffled


@pytest.fixture
def ethanol(tmp_path):
    R = harmonic_frames(T=201, N=9)
    path = tmp_path / "md17_ethanol.npz"
    save_sgdml(path, R, ETHANOL_Z)
    return path, R


def test_summary_values(ethanol):
    path, R = ethanol
    summary = summarize(path)
    steps = np.sqrt(((R[1:] - R[:-1]) ** 2).sum(-1).mean(-1))  # RMS per atom, each consecutive pair
    assert summary["file"] == str(path)
    assert summary["format"].startswith("npz")
    assert (summary["frames"], summary["atoms"]) == (201, 9)
    assert summary["formula"] == "C2H6O"
    assert summary["element_counts"] == {"C": 2, "H": 6, "O": 1}
    assert summary["dt_fs"] == 0.5
    assert summary["duration_ps"] == pytest.approx(0.1)  # 200 steps of 0.5 fs
    assert summary["mean_step_angstrom"] == pytest.approx(steps.mean(), rel=1e-5)
    assert summary["time_order_ratio"] < 0.5 and summary["time_order"] == "time-ordered"
    assert summary["energies"] and summary["forces"]


def test_summary_verdicts(tmp_path):
    R = harmonic_frames(T=200, N=9)
    save_sgdml(tmp_path / "mixed.npz", shuffled(R), ETHANOL_Z)
    np.savez(tmp_path / "short.npz", R=R[:5], z=ETHANOL_Z, dt_fs=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the report states the verdict instead of warning
        assert summarize(tmp_path / "mixed.npz")["time_order"] == "looks shuffled"
    short = summarize(tmp_path / "short.npz")
    assert short["time_order"] == "too short to tell" and not short["energies"] and short["dt_fs"] == 1.0


def test_summary_with_topology_and_selection(md_files):  # noqa: F811 (pytest fixture)
    traj, R, tmp_path = md_files
    traj.save(str(tmp_path / "run.dcd"))
    summary = summarize(tmp_path / "run.dcd", topology=tmp_path / "top.pdb", selection="not element H", dt_fs=2.0)
    assert summary["formula"] == "CO" and summary["atoms"] == 2
    assert summary["format"] == "DCD (mdtraj)"
    assert summary["duration_ps"] == pytest.approx(59 * 2.0 / 1000)


def test_main_prints_report(ethanol, capsys):
    path, _ = ethanol
    assert main([str(path)]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["file"].strip() == str(path)
    assert lines["frames"].strip() == "201" and lines["atoms"].strip() == "9"
    assert lines["elements"].strip() == "C2H6O (C 2, H 6, O 1)"
    assert lines["dt"].strip() == "0.5 fs" and lines["duration"].strip() == "0.1 ps"
    assert lines["time order"].strip().startswith("time-ordered")
    assert lines["energies"].strip() == "yes" and lines["forces"].strip() == "yes"


def test_main_options_and_errors(md_files, capsys):  # noqa: F811 (pytest fixture)
    traj, _, tmp_path = md_files
    traj.save(str(tmp_path / "run.dcd"))
    assert (
        main(
            [
                str(tmp_path / "run.dcd"),
                "--topology",
                str(tmp_path / "top.pdb"),
                "--dt-fs",
                "0.5",
                "--selection",
                "element O",
            ]
        )
        == 0
    )
    assert "O (O 1)" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"run\.dcd.*dt_fs"):
        main([str(tmp_path / "run.dcd"), "--topology", str(tmp_path / "top.pdb")])
    with pytest.raises(DataError, match=r"nothing\.npz: no such file"):
        main([str(tmp_path / "nothing.npz")])


def test_the_generators_record_is_shown(ethanol, tmp_path, capsys):
    path, R = ethanol
    assert summarize(path)["generated_by"] is None  # an MD17 file says nothing of how it was made
    ours = tmp_path / "ours.npz"
    np.savez(
        ours,
        R=R,
        z=ETHANOL_Z,
        dt_fs=0.5,
        method="GFN2-xTB/tblite",
        temperature=500.0,
        timestep_fs=0.5,
        seed=3,
        drift_meV_per_atom_per_ps=0.0029,
    )
    assert summarize(ours)["generated_by"]["temperature"] == 500.0
    assert main([str(ours)]) == 0
    assert (
        "made by:     GFN2-xTB/tblite, NVE after thermalising at 500 K, 0.5 fs steps, total-energy drift "
        "+0.0029 meV/atom/ps, seed 3"
    ) in capsys.readouterr().out
