"""`asteroid analyze`: geometry, Jensen-Shannon divergence, unphysical frames, the report files and the command."""

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.data import atomic_masses

import asteroid
from asteroid.analysis import (
    Topology,
    bond_angles,
    dihedral_angles,
    energy_comparison,
    format_report,
    gfn2_energies,
    jensen_shannon,
    physical_report,
    radius_of_gyration,
    save_report,
    shared_histogram,
)
from asteroid.data import load_trajectory

from helpers import ETHANOL_Z, save_sgdml, vibrating

ETHANOL = ase.io.read(Path(asteroid.__file__).with_name("structures") / "ethanol.xyz").positions  # (9, 3) minimum
DT = 0.5


@pytest.fixture(scope="module")
def reference():
    return vibrating()


# ---- geometry ------------------------------------------------------------------------------------------------------
def test_dihedral_angle_and_radius_of_gyration_on_constructed_geometries():
    for theta in (60.0, -120.0, 180.0, 5.0):
        t = np.radians(theta)
        frame = np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1.5], [np.cos(t), np.sin(t), 1.5]])
        assert dihedral_angles(frame, np.array([[0, 1, 2, 3]]))[0] == pytest.approx(theta if theta != 180 else 180)
        assert bond_angles(frame, np.array([[0, 1, 2]]))[0] == pytest.approx(90.0)
    # carbon and oxygen 1.4 A apart: Rg^2 = m_C m_O d^2 / (m_C + m_O)^2 about the centre of mass
    m_c, m_o = atomic_masses[6], atomic_masses[8]
    pair = np.array([[0.3, -1.0, 2.0], [1.7, -1.0, 2.0]])
    expected = 1.4 * np.sqrt(m_c * m_o) / (m_c + m_o)
    assert radius_of_gyration(pair, np.array([6, 8])) == pytest.approx(expected)
    square = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]]) + 5.0  # equal masses 1 A from the centre
    assert radius_of_gyration(square[None], np.array([1, 1, 1, 1]))[0] == pytest.approx(1.0)


def test_ethanol_topology():
    topology = Topology.of(ETHANOL_Z, ETHANOL)
    labels = topology.feature_labels()
    assert labels["bond_length"] == ["C1-C2", "C1-H1", "C1-H2", "C1-H3", "C2-O1", "C2-H4", "C2-H5", "O1-H6"]
    assert len(labels["angle"]) == 13 and "C1-C2-O1" in labels["angle"] and "C2-O1-H6" in labels["angle"]
    # the methyl and the hydroxyl rotor, each once, through the heaviest neighbours
    assert labels["dihedral"] == ["H1-C1-C2-O1", "C1-C2-O1-H6"]


# ---- Jensen-Shannon divergence -------------------------------------------------------------------------------------
def test_jensen_shannon_of_identical_and_disjoint_histograms():
    assert jensen_shannon([1, 2, 3, 0], [2, 4, 6, 0]) == 0.0
    assert jensen_shannon([1, 1, 0, 0], [0, 0, 1, 3]) == 1.0
    half = jensen_shannon([1, 0], [1, 1])  # 0.5 KL(p||m) + 0.5 KL(q||m) with m = (3/4, 1/4)
    assert half == pytest.approx(0.5 * np.log2(4 / 3) + 0.5 * (0.5 * np.log2(2 / 3) + 0.5 * np.log2(2)))
    # predicted values far outside the reference fall in an overflow bin: disjoint, not squeezed into shared bins
    _, p, q = shared_histogram(np.full(10, 50.0), np.linspace(1.0, 1.2, 100))
    assert jensen_shannon(p, q) == 1.0 and p[-1] == 10 and q[0] == q[-1] == 0


def test_self_comparison_is_physical_with_zero_error(reference):
    report = physical_report(reference[None, 1:], ETHANOL_Z, DT, reference, DT, continuation=reference[None, 1:])
    json.dumps(report, allow_nan=False)
    for name, distribution in report["distributions"].items():
        assert distribution["jsd_max"] == pytest.approx(0.0, abs=1e-3), name
    assert not report["unphysical"]["any"]
    assert all(t["first_frame"] is None for t in report["unphysical"]["trajectories"])
    error = report["coordinate_error"]
    assert max(error["rmsd"]) == 0.0 and max(error["kabsch_rmsd"]) < 1e-6
    assert error["decorrelation_time_fs"] is None and error["independent_kabsch_rmsd"] > 0.03
    bonds = report["deviation"]["bond_length"]
    assert max(bonds["vs_continuation"]["rms"]) == 0.0
    assert max(report["deviation"]["angle"]["vs_continuation"]["rms"]) < 1e-6
    # against the reference mean, a trajectory from the same ensemble sits at the reference's own fluctuation
    late = np.mean(bonds["vs_reference_mean"]["rms"][-10:])
    assert late == pytest.approx(bonds["reference_fluctuation"], rel=0.3)
    motion = report["motion"]
    assert motion["mean_step"]["predicted"] == pytest.approx(motion["mean_step"]["reference"], rel=1e-3)
    assert motion["kinetic_temperature"]["predicted"] == pytest.approx(
        motion["kinetic_temperature"]["reference"], rel=1e-3
    )
    assert motion["spectrum"]["overlap"] > 0.95
    assert report["target"]["met"] is True, report["target"]["unmet"]


def test_a_reference_shorter_than_a_spectrum_segment_still_gives_every_statistic(reference):
    """A 60-frame reference against a 400-frame rollout: the spectra share the shorter one's segment (issue 30: a
    reference of fewer than 129 frames at the model's spacing ended in a broadcast error)."""
    report = physical_report(reference[None, 1:401], ETHANOL_Z, DT, reference[:60], DT)
    spectrum = report["motion"]["spectrum"]
    assert len(spectrum["predicted"]) == len(spectrum["reference"]) == 59 // 2 + 1
    assert 0.5 < spectrum["overlap"] <= 1.0


def test_a_frozen_and_a_cartesian_noise_trajectory_fail_the_target(reference):
    """Neither holding the geometry still nor shaking it at random passes: the motion checks catch what the
    distributions alone might not."""
    frozen = np.repeat(reference[None, :1], 2000, axis=1) + 1e-4 * np.random.default_rng(0).normal(size=(1, 2000, 9, 3))
    noisy = reference[None, :2000] + 0.03 * np.random.default_rng(1).normal(size=(1, 2000, 9, 3))
    for name, trajectory in (("frozen", frozen), ("noisy", noisy)):
        report = physical_report(trajectory, ETHANOL_Z, DT, reference, DT)
        assert report["target"]["met"] is False, name
        motion = report["motion"]
        ratio = motion["kinetic_temperature"]["predicted"] / motion["kinetic_temperature"]["reference"]
        assert (ratio < 0.1) if name == "frozen" else (ratio > 2), (name, ratio)
        assert motion["spectrum"]["overlap"] < 0.8, name
        assert any("kinetic temperature" in reason for reason in report["target"]["unmet"]), name


def test_time_shifted_copy_is_close_and_a_hotter_trajectory_is_not(reference):
    shifted = physical_report(reference[None, 2000:], ETHANOL_Z, DT, reference[:2000], DT)
    hot = physical_report(vibrating(2000, amplitude=0.06, seed=1)[None], ETHANOL_Z, DT, reference[:2000], DT)
    assert shifted["coordinate_error"] is None
    for name in ("bond_length", "angle", "radius_of_gyration"):
        assert shifted["distributions"][name]["jsd_max"] < 0.05, name
        assert hot["distributions"][name]["jsd_mean"] > 3 * shifted["distributions"][name]["jsd_mean"], name
    bond = hot["distributions"]["bond_length"]["items"][0]
    assert bond["predicted_std"] > 1.5 * bond["reference_std"]
    assert not hot["unphysical"]["any"]


# ---- unphysical frames ---------------------------------------------------------------------------------------------
def test_stretched_bond_flags_its_first_frame(reference):
    k, dt = 37, 5.0
    predicted = reference[None, 100:300].copy()
    c0, h3 = predicted[0, k:, 0], predicted[0, k:, 3]
    predicted[0, k:, 3] = c0 + 2 * (h3 - c0)  # C1-H1 twice as long from frame k on
    unphysical = physical_report(predicted, ETHANOL_Z, dt, reference, DT)["unphysical"]
    first = unphysical["trajectories"][0]
    assert first["first_frame"] == k and first["first_time_fs"] == (k + 1) * dt
    assert first["reason"].startswith("bond C1-H1") and first["unphysical_frames"] == 200 - k
    assert unphysical["any"] and unphysical["fraction"] == pytest.approx((200 - k) / 200)


def test_overlapping_atoms_and_nonfinite_frames_are_flagged(reference):
    predicted = np.stack([reference[:50], reference[50:100]])  # (2, 50, 9, 3)
    predicted[0, 20, 3] = predicted[0, 20, 4] + [0.2, 0.0, 0.0]  # H1 onto H2: C1-H1 stays a normal length
    predicted[1, 10:] = np.nan
    report = physical_report(predicted, ETHANOL_Z, DT, reference, DT)
    first, second = report["unphysical"]["trajectories"]
    assert (first["first_frame"], first["unphysical_frames"]) == (20, 1)
    assert first["reason"].startswith("non-bonded H1-H2 0.200 A")
    assert (second["first_frame"], second["reason"]) == (10, "non-finite coordinates")
    assert report["predicted"]["nonfinite_frames"] == 40
    json.dumps(report, allow_nan=False)  # the NaN frames leave no NaN in the report


def test_reference_geometries_are_never_unphysical():
    # a bond the reference itself stretches 1.7 x (a proton transfer) is allowed to the reference's extreme
    reference = vibrating(400)
    reference[200:210, 8] = reference[200:210, 2] + 1.7 * (reference[200:210, 8] - reference[200:210, 2])
    report = physical_report(reference[None], ETHANOL_Z, DT, reference, DT)
    assert not report["unphysical"]["any"]
    limits = {item["bond"]: item for item in report["unphysical"]["bond_limits"]}
    assert limits["O1-H6"]["upper"] > 1.6 and limits["C1-C2"]["upper"] == pytest.approx(1.5 * 1.52, rel=0.02)


def test_decorrelation_time_is_when_the_error_reaches_independent_frames(reference):
    k = 25
    continuation = reference[None, 1:101]
    predicted = continuation.copy()
    centre = predicted[0, k:].mean(1, keepdims=True)
    predicted[0, k:] = centre + 3 * (predicted[0, k:] - centre)  # blown up: far past two independent frames
    error = physical_report(predicted, ETHANOL_Z, DT, reference, DT, continuation)["coordinate_error"]
    assert error["decorrelation_time_fs"] == (k + 1) * DT
    assert error["decorrelation_time_fs_per_trajectory"] == [(k + 1) * DT]


# ---- files and the command -----------------------------------------------------------------------------------------
def test_save_report_writes_json_figures_and_tensorboard(reference, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    report = physical_report(reference[None, 1:301], ETHANOL_Z, DT, reference, DT, reference[None, 1:101])
    save_report(report, tmp_path / "out", tmp_path / "tb")
    printed = capsys.readouterr().out
    assert "Jensen-Shannon" in printed and "C1-H1" in printed and "target" in printed
    stored = json.loads((tmp_path / "out" / "report.json").read_text())
    assert stored["unphysical"]["any"] is False and stored["coordinate_error"]["frames"] == 100
    assert set(stored["distributions"]) == {"bond_length", "angle", "dihedral", "radius_of_gyration"}
    assert (tmp_path / "out" / "report.json").stat().st_size < 200_000
    names = {"coordinate_error", "deviation", "bond_length", "angle", "dihedral", "radius_of_gyration", "spectrum"}
    for name in names:
        assert (tmp_path / "out" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert set(events.Tags()["images"]) == {f"analysis/{name}" for name in names}


def test_reference_energies_only_when_they_are_gfn2(tmp_path):
    from asteroid.simulation.xtb import METHOD

    R = vibrating(20)
    np.savez(tmp_path / "ours.npz", R=R, z=ETHANOL_Z, dt_fs=DT, E=np.arange(20.0), method=METHOD)
    save_sgdml(tmp_path / "md17.npz", R, ETHANOL_Z)  # DFT energies: another absolute scale
    ours, md17 = tmp_path / "ours.npz", tmp_path / "md17.npz"
    assert np.array_equal(gfn2_energies(ours, load_trajectory(ours)), np.arange(20.0))
    assert gfn2_energies(md17, load_trajectory(md17)) is None


def test_too_few_frames_with_an_energy_give_no_statistic(monkeypatch):
    # 4 of 5 predicted frames break the SCF (NaN): one energy is no distribution
    monkeypatch.setattr(
        "asteroid.analysis.energy.xtb_energies", lambda z, frames: np.array([-3180.0] + [np.nan] * (len(frames) - 1))
    )
    frames = np.zeros((5, 3, 3))
    energy = energy_comparison(frames[None], np.array([8, 1, 1]), frames, 5, reference_energies=np.full(5, -3181.0))
    assert energy["failed"] == 4 and energy["jsd"] is None and energy["predicted_mean"] is None
    assert "only 1 of 5 predicted frames have an energy" in energy["note"]
    reference = vibrating(200)
    report = physical_report(reference[None, 1:], ETHANOL_Z, DT, reference, DT) | {"energy": energy}
    assert "only 1 of 5 predicted frames have an energy" in format_report(report)
