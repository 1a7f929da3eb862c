"""Trajectory readers: round trips for every format, the time-order check, MD17/MD22 resolution.

Bad files of every format (truncated, wrong dtypes, NaN, mismatched atoms, empty, directories) are the table of
tests/integration/test_reliability.py."""

import io
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest

from asteroid.data.md17 import check_dataset, download_dataset, resolve_dataset
from asteroid.data.readers import load_trajectory
from asteroid.data.summary import summarize
from asteroid.data.time_order import (
    THRESHOLD,
    TimeOrderWarning,
    is_time_ordered,
    largest_jump,
    mean_step_displacement,
    rms_displacement,
    time_order_ratio,
)
from asteroid.errors import DataError

from helpers import ETHANOL_Z, harmonic_frames, save_sgdml, shuffled

Z = np.array([8, 6, 1, 1, 1])  # O C H H H


# --- npz ---------------------------------------------------------------------------------------------


def test_sgdml_npz_round_trip(tmp_path):
    R = harmonic_frames()
    path = tmp_path / "md17_test.npz"
    save_sgdml(path, R, Z)
    traj = load_trajectory(path)
    np.testing.assert_allclose(traj.R, R, atol=1e-6)
    assert traj.R.dtype == np.float32 and traj.R.shape == (60, 5, 3)
    np.testing.assert_array_equal(traj.z, Z)
    assert traj.dt_fs == 0.5  # MD17 spacing, from the sGDML metadata
    assert traj.name == "md17_test" and traj.source == str(path)
    np.testing.assert_array_equal(traj.E, np.arange(60))
    assert traj.F.shape == (60, 5, 3)


def test_npz_dt_from_file_and_argument(tmp_path):
    path = tmp_path / "gen.npz"
    np.savez(path, R=harmonic_frames(), z=Z, dt_fs=2.0)
    assert load_trajectory(path).dt_fs == 2.0
    assert load_trajectory(path, dt_fs=1.0, name="mine").dt_fs == 1.0  # an explicit argument wins
    assert load_trajectory(path, name="mine").name == "mine"


def test_plain_npz_needs_dt(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, R=harmonic_frames(), z=Z)
    with pytest.raises(DataError, match=r"plain\.npz.*dt_fs"):
        load_trajectory(path)
    assert load_trajectory(path, dt_fs=0.25).dt_fs == 0.25


def test_npz_heavy_atom_selection(tmp_path):
    path = tmp_path / "sel.npz"
    R = harmonic_frames()
    save_sgdml(path, R, Z)
    traj = load_trajectory(path, selection="not element H")
    np.testing.assert_array_equal(traj.z, [8, 6])
    np.testing.assert_allclose(traj.R, R[:, :2], atol=1e-6)
    assert traj.F.shape == (60, 2, 3)
    assert load_trajectory(path, selection="index 2 to 4").n_atoms == 3


def test_npz_topology_is_refused(tmp_path):
    path = tmp_path / "top.npz"
    save_sgdml(path, harmonic_frames(), Z)
    with pytest.raises(DataError, match=r"top\.npz: a topology is only used"):
        load_trajectory(path, topology="x.pdb")


# --- ASE ---------------------------------------------------------------------------------------------


def ase_frames(R, z, info=None, with_results=True):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for t, positions in enumerate(R):
        atoms = Atoms(numbers=z, positions=positions)
        atoms.info.update({key: value(t) for key, value in (info or {}).items()})
        if with_results:
            atoms.calc = SinglePointCalculator(atoms, energy=-1.0 * t, forces=np.full((len(z), 3), float(t)))
        frames.append(atoms)
    return frames


@pytest.mark.parametrize("suffix", ["extxyz", "traj"])
def test_ase_round_trip(tmp_path, suffix):
    import ase.io

    R = harmonic_frames()
    path = tmp_path / f"run.{suffix}"
    ase.io.write(path, ase_frames(R, Z, info={"dt_fs": lambda t: 0.25}))
    traj = load_trajectory(path)
    np.testing.assert_allclose(traj.R, R, atol=1e-5)
    np.testing.assert_array_equal(traj.z, Z)
    assert traj.dt_fs == 0.25 and traj.name == "run"
    np.testing.assert_allclose(traj.E, -np.arange(60.0))
    np.testing.assert_allclose(traj.F[:, 0, 0], np.arange(60.0))


def test_plain_xyz_needs_dt(tmp_path):
    import ase.io

    R = harmonic_frames()
    path = tmp_path / "plain.xyz"
    ase.io.write(path, ase_frames(R, Z, with_results=False), format="xyz")
    with pytest.raises(DataError, match=r"plain\.xyz.*dt_fs"):
        load_trajectory(path)
    traj = load_trajectory(path, dt_fs=1.0)
    np.testing.assert_allclose(traj.R, R, atol=1e-5)
    assert traj.E is None and traj.F is None


def test_cp2k_style_times(tmp_path):
    frames = "".join(
        f"3\n i = {t}, time = {0.5 * t:.3f}, E = -17.0\nO 0 0 {0.01 * t}\nH 0 0.96 0\nH 0.96 0 0\n" for t in range(12)
    )
    path = tmp_path / "cp2k-pos-1.xyz"
    path.write_text(frames)
    traj = load_trajectory(path)
    assert traj.dt_fs == pytest.approx(0.5) and traj.n_frames == 12
    path.write_text(frames.replace("time = 1.000", "time = 1.200"))
    with pytest.raises(DataError, match=r"cp2k-pos-1\.xyz: frames are not evenly spaced"):
        load_trajectory(path)


def test_ase_heavy_atom_selection(tmp_path):
    import ase.io

    path = tmp_path / "sel.extxyz"
    ase.io.write(path, ase_frames(harmonic_frames(), Z))
    traj = load_trajectory(path, dt_fs=0.5, selection="not element H")
    np.testing.assert_array_equal(traj.z, [8, 6])


# --- mdtraj ------------------------------------------------------------------------------------------


# nm -> Angstrom checks at each format's stored precision (xtc: 1e-3 nm; pdb: 1e-3 Angstrom)
@pytest.mark.filterwarnings("ignore:.*netCDF4")  # mdtraj writing .nc through scipy: slower, not wrong
@pytest.mark.parametrize("suffix, atol", [("xtc", 0.011), ("trr", 1e-5), ("nc", 1e-3)])
def test_mdtraj_timed_round_trip(md_files, suffix, atol):
    traj, R, tmp_path = md_files
    path = tmp_path / f"run.{suffix}"
    traj.save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # smooth frames: no time-order warning, and the netCDF4 notice is silenced
        loaded = load_trajectory(path, topology=tmp_path / "top.pdb")
    np.testing.assert_allclose(loaded.R, R, atol=atol)
    np.testing.assert_array_equal(loaded.z, Z)
    assert loaded.dt_fs == pytest.approx(0.5, rel=1e-4)  # from the file's times, ps -> fs
    assert load_trajectory(path, topology=tmp_path / "top.pdb", dt_fs=2.0).dt_fs == 2.0


@pytest.mark.parametrize("suffix, atol", [("dcd", 1e-5), ("pdb", 6e-4)])
def test_mdtraj_untimed_round_trip(md_files, suffix, atol):
    traj, R, tmp_path = md_files
    path = tmp_path / f"run.{suffix}"
    traj.save(str(path))
    topology = None if suffix == "pdb" else tmp_path / "top.pdb"  # a multi-model pdb is its own topology
    with pytest.raises(DataError, match=rf"run\.{suffix}.*dt_fs"):  # dcd/pdb store no frame times
        load_trajectory(path, topology=topology)
    loaded = load_trajectory(path, topology=topology, dt_fs=0.5)
    np.testing.assert_allclose(loaded.R, R, atol=atol)
    np.testing.assert_array_equal(loaded.z, Z)
    assert loaded.n_frames == 60 and loaded.dt_fs == 0.5


def test_mdtraj_h5_round_trip(md_files):
    traj, R, tmp_path = md_files
    traj.save(str(tmp_path / "run.h5"))
    loaded = load_trajectory(tmp_path / "run.h5")
    np.testing.assert_allclose(loaded.R, R, atol=1e-5)
    assert loaded.dt_fs == pytest.approx(0.5, rel=1e-4)


def test_mdtraj_selection(md_files):
    traj, R, tmp_path = md_files
    traj.save(str(tmp_path / "run.xtc"))
    top = tmp_path / "top.pdb"
    heavy = load_trajectory(tmp_path / "run.xtc", topology=top, selection="not element H")
    np.testing.assert_array_equal(heavy.z, [8, 6])
    np.testing.assert_allclose(heavy.R, R[:, :2], atol=0.011)
    assert load_trajectory(tmp_path / "run.xtc", topology=top, selection="name H2").n_atoms == 1
    with pytest.raises(DataError, match=r"run\.xtc: atom selection 'protein and name CA' matches no atom"):
        load_trajectory(tmp_path / "run.xtc", topology=top, selection="protein and name CA")
    with pytest.raises(DataError, match=r"run\.xtc: invalid atom selection"):
        load_trajectory(tmp_path / "run.xtc", topology=top, selection="element (")


def test_mdtraj_needs_topology(md_files):
    traj, _, tmp_path = md_files
    traj.save(str(tmp_path / "run.dcd"))
    with pytest.raises(DataError, match=r"run\.dcd: .*pass a topology"):
        load_trajectory(tmp_path / "run.dcd", dt_fs=0.5)
    with pytest.raises(DataError, match=r"missing\.pdb: cannot read the topology"):
        load_trajectory(tmp_path / "run.dcd", topology=tmp_path / "missing.pdb", dt_fs=0.5)


def test_mdtraj_virtual_sites(tmp_path):
    import mdtraj as md

    topology = md.Topology()
    residue = topology.add_residue("HOH", topology.add_chain())
    topology.add_atom("O", md.element.oxygen, residue)
    topology.add_atom("EP", md.element.virtual, residue)  # TIP4P-style massless site
    md.Trajectory(harmonic_frames(N=2) / 10.0, topology).save_pdb(str(tmp_path / "tip4p.pdb"))
    with pytest.raises(DataError, match=r"tip4p\.pdb: no chemical element for atom\(s\) HOH0-EP"):
        load_trajectory(tmp_path / "tip4p.pdb", dt_fs=1.0)
    np.testing.assert_array_equal(load_trajectory(tmp_path / "tip4p.pdb", dt_fs=1.0, selection="not element VS").z, [8])


# --- time order --------------------------------------------------------------------------------------


def test_time_order_ratio_separates_ordered_from_shuffled():
    R = harmonic_frames(T=400)
    assert time_order_ratio(R) < 0.2
    assert 0.8 < time_order_ratio(shuffled(R)) < 1.2
    assert is_time_ordered(R) is True and is_time_ordered(shuffled(R)) is False


def test_a_jumping_atom_is_found_and_warned_about(tmp_path):
    R = harmonic_frames(T=400)
    assert largest_jump(R) is None
    jumped = R.copy()
    jumped[200:, 3] += [50.0, 0.0, 0.0]  # atom 3 leaps 50 A and stays: still "ordered" by the displacement ratio
    assert time_order_ratio(jumped) < THRESHOLD
    jump = largest_jump(jumped)
    assert (jump["frame"], jump["atom"]) == (199, 3) and jump["distance"] == pytest.approx(50.0, abs=0.5)
    np.savez(tmp_path / "jump.npz", R=jumped, z=ETHANOL_Z[:5], dt_fs=0.5)
    with pytest.warns(TimeOrderWarning, match=r"jump\.npz: atom 3 jumps 50(\.\d+)? A between frames 199 and 200"):
        load_trajectory(tmp_path / "jump.npz")
    assert summarize(tmp_path / "jump.npz")["time_order"].startswith("discontinuous: atom 3 moves")


def test_time_order_subsamples_large_inputs():
    R = harmonic_frames(T=5000, N=300)  # more frame pairs and atoms than the check looks at
    assert time_order_ratio(R) < 0.2 and time_order_ratio(shuffled(R)) > 0.8
    assert time_order_ratio(R, rng=3) == pytest.approx(time_order_ratio(R, rng=4), rel=0.1)


def test_time_order_unknown_cases():
    R = harmonic_frames(T=9)
    assert np.isnan(time_order_ratio(R)) and is_time_ordered(R) is None  # too few frames
    assert is_time_ordered(np.zeros((50, 3, 3))) is None  # nothing moves


def test_displacements():
    A, B = np.zeros((2, 4, 3)), np.zeros((2, 4, 3))
    B[0, :, 0] = 2.0  # every atom moved 2 A
    B[1, 0] = [0.0, 3.0, 4.0]  # one atom of four moved 5 A
    np.testing.assert_allclose(rms_displacement(A, B), [2.0, 2.5])
    R = harmonic_frames(T=50)
    expected = np.mean([np.sqrt(((R[t + 1] - R[t]) ** 2).sum(-1).mean()) for t in range(49)])
    assert mean_step_displacement(R, chunk=7) == pytest.approx(expected, rel=1e-6)
    assert np.isnan(mean_step_displacement(R[:1]))


def test_shuffled_file_warns(tmp_path):
    R = harmonic_frames(T=200)
    save_sgdml(tmp_path / "ordered.npz", R, Z)
    save_sgdml(tmp_path / "shuffled.npz", shuffled(R), Z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_trajectory(tmp_path / "ordered.npz")
        load_trajectory(tmp_path / "shuffled.npz", check_order=False)
    with pytest.warns(TimeOrderWarning, match=r"shuffled\.npz: frames look shuffled"):
        load_trajectory(tmp_path / "shuffled.npz")


# --- MD17 / MD22 -------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError(OSError("Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)


def ethanol_bytes(R):
    buffer = io.BytesIO()
    save_sgdml(buffer, R, ETHANOL_Z)
    return buffer.getvalue()


def serve(monkeypatch, payload):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(payload))


def test_resolve_local(tmp_path, no_network):
    own = tmp_path / "own.npz"
    save_sgdml(own, harmonic_frames(N=9), ETHANOL_Z)
    assert resolve_dataset(own, root=tmp_path / "data") == own
    save_sgdml(tmp_path / "md17_ethanol.npz", harmonic_frames(N=9), ETHANOL_Z)
    assert resolve_dataset("MD17:Ethanol", root=tmp_path) == tmp_path / "md17_ethanol.npz"
    with pytest.raises(DataError, match=r"md17:water: no such file, and not a known dataset.*md22:Ac-Ala3-NHMe"):
        resolve_dataset("md17:water", root=tmp_path)


def test_resolve_offline(tmp_path, no_network):
    with pytest.raises(DataError, match=r"md17_aspirin\.npz: cannot download, the machine looks offline.*local path"):
        resolve_dataset("md17:aspirin", root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


class CutConnection(io.BytesIO):
    def read(self, *args):
        raise TimeoutError("timed out")


@pytest.mark.parametrize(
    "failure, message",
    [
        (urllib.error.HTTPError("url", 404, "Not Found", {}, None), "the server answered 404 Not Found"),
        (None, r"the download failed \(timed out\)"),
    ],
)
def test_download_failures_leave_nothing(tmp_path, monkeypatch, failure, message):
    def urlopen(url, timeout=None):
        if failure is not None:
            raise failure
        return CutConnection()

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError, match=rf"md22_DHA\.npz: {message}"):
        resolve_dataset("md22:DHA", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_check_dataset(tmp_path):
    R = harmonic_frames(T=200, N=9)
    save_sgdml(tmp_path / "good.npz", R, ETHANOL_Z)
    check_dataset(tmp_path / "good.npz", "md17:ethanol")
    with pytest.raises(DataError, match=r"good\.npz: md17:aspirin has 21 atoms but the file has 9"):
        check_dataset(tmp_path / "good.npz", "md17:aspirin")
    save_sgdml(tmp_path / "shuffled.npz", shuffled(R), ETHANOL_Z)
    with pytest.raises(DataError, match=r"shuffled\.npz: the frames of md17:ethanol do not look time-ordered"):
        check_dataset(tmp_path / "shuffled.npz", "md17:ethanol")


def test_download_checks_before_keeping(tmp_path, monkeypatch):
    R = harmonic_frames(T=200, N=9)
    serve(monkeypatch, ethanol_bytes(shuffled(R)))
    with pytest.raises(DataError, match=r"md17_ethanol\.npz: the downloaded file failed its check.*time-ordered"):
        resolve_dataset("md17:ethanol", root=tmp_path)
    assert list(tmp_path.iterdir()) == []
    serve(monkeypatch, ethanol_bytes(R))
    path = resolve_dataset("md17:ethanol", root=tmp_path)
    assert path == tmp_path / "md17_ethanol.npz" and list(tmp_path.iterdir()) == [path]
    np.testing.assert_allclose(load_trajectory(path).R, R, atol=1e-6)
    serve(monkeypatch, b"not a zip file")
    with pytest.raises(DataError, match=r"failed its check.*not an npz file"):
        download_dataset("md17:ethanol", tmp_path / "again.npz")
    assert list(tmp_path.iterdir()) == [path]


def test_float32_frame_times_give_the_spacing_they_were_written_with():
    from asteroid.data.read_common import uniform_step_fs

    times = (np.arange(12345) * 5.0 + 1234.56).astype(np.float32).astype(np.float64)
    assert (times[-1] - times[0]) / (len(times) - 1) != 5.0  # 4.9999999 before
    assert uniform_step_fs(times, "t.xtc") == 5.0
    assert uniform_step_fs(np.arange(10) * 0.4837162, "t.h5") == 0.483716
