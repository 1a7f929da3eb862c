"""The GFN2-xTB MD generator: physics sanity, the MD17 file layout, exact resume, atomic output, bad input."""

import ctypes
import itertools
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from ase.data import covalent_radii
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet
from tblite.ase import TBLite

from asteroid.commands.simulate import main
from asteroid.errors import AsteroidError, ConfigError, DataError
from asteroid.simulation.md import simulate
from asteroid.simulation.state import checkpoint_path
from asteroid.simulation.xtb import BUILTIN_MOLECULES, openmp_threads, structure_path

KCAL_MOL = units.kcal / units.mol  # eV
FORMULAS = {
    "aspirin": "C9H8O4",
    "benzene": "C6H6",
    "ethanol": "C2H6O",
    "malonaldehyde": "C3H4O2",
    "naphthalene": "C10H8",
    "salicylic": "C7H6O3",
    "toluene": "C7H8",
    "uracil": "C4H4N2O2",
}
MD17_ATOMS = {
    "aspirin": 21,
    "benzene": 12,
    "ethanol": 9,
    "malonaldehyde": 9,
    "naphthalene": 18,
    "salicylic": 16,
    "toluene": 15,
    "uracil": 12,
}
# a short run: 40 Langevin steps, then 200 NVE steps of 0.5 fs (100 fs)
SHORT = dict(molecule="ethanol", frames=201, thermalize_steps=40, seed=0, progress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "ethanol_xtb.npz"
    report = simulate(out, **SHORT)
    with np.load(out) as data:
        return report, {key: data[key] for key in data.files}


def interrupt_at(monkeypatch, integrator, call):
    """Make the `call`-th step of `integrator` raise KeyboardInterrupt, as Ctrl-C in the middle of a run would."""
    original, calls = integrator.step, itertools.count(1)

    def step(self, *args, **kwargs):
        if next(calls) == call:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(integrator, "step", step)


def count_steps(monkeypatch):
    """A list that gets one entry per MD step (Langevin or NVE) taken from now on."""
    taken = []
    for integrator in (Langevin, VelocityVerlet):

        def step(self, *args, original=integrator.step, **kwargs):
            taken.append(type(self).__name__)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(integrator, "step", step)
    return taken


def single_point(z, positions):
    atoms = Atoms(numbers=z, positions=positions)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    return atoms.get_potential_energy(), atoms.get_forces()


def angular_momentum(R, z, dt_fs):
    """Net angular momentum of each inner frame from central-difference velocities, amu A^2/fs: (T-2, 3)."""
    masses = Atoms(numbers=z).get_masses()[None, :, None]
    com = (masses * R).sum(1, keepdims=True) / masses.sum()
    velocity = (R[2:] - R[:-2]) / (2 * dt_fs)
    return (masses * np.cross(R[1:-1] - com[1:-1], velocity)).sum(1)


# ---- starting structures -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTIN_MOLECULES)
def test_structures_are_md17_molecules_at_a_gfn2_minimum(name):
    atoms = ase.io.read(structure_path(name))
    assert len(atoms) == MD17_ATOMS[name]
    assert atoms.get_chemical_formula(mode="hill") == FORMULAS[name]
    _, forces = single_point(atoms.numbers, atoms.positions)
    assert np.abs(forces).max() < 0.01  # eV/A: relaxed with GFN2-xTB, so the MD starts near equilibrium


def test_molecule_names_and_aliases():
    assert structure_path("salicylic acid") == structure_path("salicylic_acid") == structure_path("Salicylic")
    with pytest.raises(DataError, match="unknown molecule 'caffeine'.*aspirin.*uracil"):
        structure_path("caffeine")


# ---- the file ------------------------------------------------------------------------------------------------------
def test_npz_layout_and_md17_units(reference):
    report, data = reference
    z = ase.io.read(structure_path("ethanol")).numbers
    assert data["R"].shape == data["F"].shape == (201, 9, 3) and data["E"].shape == (201,)
    assert data["R"].dtype == data["F"].dtype == data["E"].dtype == np.float64
    np.testing.assert_array_equal(data["z"], z)
    assert float(data["dt_fs"]) == 0.5 and float(data["temperature"]) == 500.0
    assert str(data["method"]) == "GFN2-xTB/tblite" and str(data["name"]) == "ethanol"
    assert report["n_frames"] == 201 and report["n_atoms"] == 9 and report["ms_per_step"] > 0
    # E in kcal/mol and F in kcal/mol/A: a single point of frame 100 gives them back
    energy, forces = single_point(z, data["R"][100])
    np.testing.assert_allclose(data["E"][100], energy / KCAL_MOL, rtol=1e-9)
    np.testing.assert_allclose(data["F"][100], forces / KCAL_MOL, atol=1e-5)
    # and F = -dE/dR along the path (trapezoid rule over each 0.5 fs step)
    work = -0.5 * ((data["F"][1:] + data["F"][:-1]) * np.diff(data["R"], axis=0)).sum((1, 2))
    np.testing.assert_allclose(np.diff(data["E"]), work, atol=0.02 * np.abs(np.diff(data["E"])).max())


# ---- physics -------------------------------------------------------------------------------------------------------
def test_nve_conserves_total_energy(reference):
    report, data = reference
    e_total = (data["E"] + data["E_kin"]) * KCAL_MOL * 1000 / 9  # meV/atom
    max_dev = np.abs(e_total - e_total[0]).max()
    # velocity Verlet at 0.5 fs: the total energy fluctuates by well under 2 meV/atom and does not run away
    assert max_dev < 2.0
    assert report["max_dE_meV_per_atom"] == pytest.approx(max_dev)
    assert float(data["max_dE_meV_per_atom"]) == pytest.approx(max_dev)
    assert abs(report["drift_meV_per_atom_per_ps"]) < 10.0
    # the potential energy itself swings by far more: conservation is not trivially met
    assert np.ptp(data["E"]) * KCAL_MOL * 1000 / 9 > 20 * max_dev


def test_nve_starts_at_the_target_total_energy(reference):
    _, data = reference
    relaxed, _ = single_point(data["z"], ase.io.read(structure_path("ethanol")).positions)
    internal_dof = 3 * 9 - 6
    e_total0 = (data["E"][0] + data["E_kin"][0]) * KCAL_MOL
    assert e_total0 == pytest.approx(relaxed + internal_dof * units.kB * 500.0, abs=1e-4)


def test_bonds_stay_intact(reference):
    _, data = reference
    start = ase.io.read(structure_path("ethanol"))
    radii = covalent_radii[start.numbers]
    d0 = start.get_all_distances()
    bonded = np.triu(d0 < 1.2 * (radii[:, None] + radii[None, :]), k=1)
    assert bonded.sum() == 8  # ethanol: C-C, C-O, 5 C-H, O-H
    d = np.linalg.norm(data["R"][:, :, None] - data["R"][:, None, :], axis=-1)[:, bonded]  # (T, bonds)
    assert np.all(np.abs(d / d0[bonded] - 1) < 0.3)


def test_no_net_drift_or_rotation_unless_kept(reference, tmp_path):
    _, data = reference
    masses = Atoms(numbers=data["z"]).get_masses()[None, :, None]
    com = (masses * data["R"]).sum(1) / masses.sum()  # (T, 3)
    assert np.abs(com - com[0]).max() < 1e-8
    L_removed = np.linalg.norm(angular_momentum(data["R"], data["z"], 0.5), axis=-1)
    simulate(tmp_path / "tumbling.npz", **SHORT | dict(keep_rotation=True))
    with np.load(tmp_path / "tumbling.npz") as kept:
        L_kept = np.linalg.norm(angular_momentum(kept["R"], kept["z"], 0.5), axis=-1)
        com_kept = (masses * kept["R"]).sum(1) / masses.sum()
    # central differences are not exact velocities, so compare with the thermal tumbling the thermostat leaves
    assert L_removed.max() < 1e-3 * L_kept.mean()
    assert np.abs(com_kept - com_kept[0]).max() > 100 * np.abs(com - com[0]).max()


# ---- sampling, reproducibility, resume -----------------------------------------------------------------------------
def test_every_records_a_subsample_of_the_same_trajectory(reference, tmp_path):
    _, data = reference
    simulate(tmp_path / "every3.npz", **SHORT | dict(frames=30, every=3))
    with np.load(tmp_path / "every3.npz") as sparse:
        assert float(sparse["dt_fs"]) == 1.5
        np.testing.assert_array_equal(sparse["R"], data["R"][::3][:30])
        np.testing.assert_array_equal(sparse["E"], data["E"][::3][:30])


def test_seed_changes_the_trajectory(reference, tmp_path):
    _, data = reference
    simulate(tmp_path / "seed1.npz", **SHORT | dict(frames=2, seed=1))
    with np.load(tmp_path / "seed1.npz") as other:
        assert np.abs(other["R"][0] - data["R"][0]).max() > 1e-3


@pytest.mark.parametrize("integrator, call", [(Langevin, 25), (VelocityVerlet, 47)], ids=["langevin", "nve"])
def test_interrupted_run_resumes_to_the_same_frames(reference, tmp_path, monkeypatch, integrator, call):
    _, data = reference
    out = tmp_path / "ethanol.npz"
    run = SHORT | dict(frames=101, checkpoint_every=10)
    interrupt_at(monkeypatch, integrator, call)
    with pytest.raises(KeyboardInterrupt):
        simulate(out, **run)
    monkeypatch.undo()
    # nothing half-written: only the checkpoint, no output and no temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_path(out).name]
    with pytest.raises(AsteroidError, match=r"ethanol\.npz\.partial\.npz.*--resume.*delete it"):
        simulate(out, **run)
    steps = count_steps(monkeypatch)
    report = simulate(out, **run, resume=True)
    # it went on from the last checkpoint (every 10 steps) instead of starting over: 40 + 100 steps in all
    done_before = call - 1 + (40 if integrator is VelocityVerlet else 0)
    assert len(steps) == 140 - done_before // 10 * 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    with np.load(out) as resumed:
        for key in ("R", "E", "F", "E_kin"):  # the 201-frame reference starts with the same 101 frames
            np.testing.assert_array_equal(resumed[key], data[key][:101])
    assert report["n_frames"] == 101


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, monkeypatch):
    out = tmp_path / "ethanol.npz"
    run = dict(molecule="ethanol", frames=3, thermalize_steps=10, checkpoint_every=5, progress=False)
    interrupt_at(monkeypatch, Langevin, 8)
    with pytest.raises(KeyboardInterrupt):
        simulate(out, **run)
    monkeypatch.undo()
    with pytest.raises(
        ConfigError,
        match=r"partial\.npz: the checkpoint is of another run \(temperature_K=500\.0 "
        r"there, 400\.0 here\)",
    ):
        simulate(out, **run, temperature_K=400.0, resume=True)
    checkpoint_path(out).write_bytes(b"not an npz")
    with pytest.raises(DataError, match=r"partial\.npz: not a usable checkpoint.*delete it"):
        simulate(out, **run, resume=True)


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    report = simulate(
        tmp_path / "fresh.npz", molecule="ethanol", frames=2, thermalize_steps=2, resume=True, progress=False
    )
    assert report["n_frames"] == 2 and (tmp_path / "fresh.npz").exists()


def test_a_second_run_to_the_same_file_stops_while_the_first_is_making_it(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ethanol.npz"
    # another process holds the file's lock, as a running `asteroid simulate --out` does
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from asteroid.fileio import sole_writer\n"
            f"with sole_writer({str(out)!r}):\n print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AsteroidError, match=r"ethanol\.npz: another process is making this file now"):
            simulate(out, molecule="ethanol", frames=2, thermalize_steps=2, progress=False)
        assert not out.exists() and not checkpoint_path(out).exists()
    finally:
        holder.kill()
        holder.wait()
    assert simulate(out, molecule="ethanol", frames=2, thermalize_steps=2, progress=False)["n_frames"] == 2


# ---- other molecules, the command line, bad input ------------------------------------------------------------------
def test_any_structure_file(tmp_path):
    water = tmp_path / "water.xyz"
    ase.io.write(water, Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))
    report = simulate(tmp_path / "water.npz", structure=water, frames=3, thermalize_steps=5, progress=False)
    with np.load(tmp_path / "water.npz") as data:
        assert str(data["name"]) == "water" and data["z"].tolist() == [8, 1, 1] and data["R"].shape == (3, 3, 3)
    assert report["n_atoms"] == 3


def test_a_smiles_string_is_embedded_kept_and_simulated(tmp_path, capfd):
    pytest.importorskip("rdkit")
    out = tmp_path / "methanol.npz"
    assert main(["--smiles", "CO", "--frames", "3", "--thermalize-steps", "5", "--out", str(out), "--no-progress"]) == 0
    with np.load(out) as data:
        assert sorted(data["z"].tolist()) == [1, 1, 1, 1, 6, 8] and data["R"].shape == (3, 6, 3)
    start = ase.io.read(tmp_path / "methanol.start.xyz")  # the embedded structure the run started from
    assert start.get_chemical_formula() == "CH4O"
    with pytest.raises(ConfigError, match=r"--smiles 'C1CC\(': RDKit cannot parse it as SMILES$"):
        main(["--smiles", "C1CC(", "--out", str(tmp_path / "bad.npz")])
    assert "Parse Error" not in capfd.readouterr().err  # RDKit's own multi-line complaint is not shown


def test_a_config_s_missing_trajectories_are_made_several_at_a_time_as_fit_makes_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ase.io.write("water.xyz", Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))
    Path("base.yaml").write_text("data:\n  sources:\n    - {path: elsewhere.npz}\n")
    Path("many.yaml").write_text(
        "extends: base.yaml\ndata:\n  sources:\n"
        "    - {path: data/water.npz, structure: water.xyz, frames: 4}\n"
        "    - {path: data/ethanol.npz, molecule: ethanol, frames: 3}\n"
        "    - {path: data/there.npz, structure: water.xyz, frames: 5}\n"
    )
    simulate("data/there.npz", structure="water.xyz", frames=5, progress=False)
    assert main(["--config", "many.yaml", "--processes", "2"]) == 0
    printed = capsys.readouterr().out
    assert "many.yaml: 1 of 3 trajectories there, 2 to make" in printed and "[2/2] data/" in printed
    with np.load("data/ethanol.npz") as data:
        assert data["R"].shape == (3, 9, 3)
    simulate("direct.npz", structure="water.xyz", frames=4, progress=False)  # what `asteroid fit` would make
    with np.load("data/water.npz") as made, np.load("direct.npz") as direct:
        np.testing.assert_array_equal(made["R"], direct["R"])
    assert main(["--config", "many.yaml"]) == 0
    assert "3 of 3 trajectories there, 0 to make" in capsys.readouterr().out
    Path("bad.yaml").write_text("data:\n  sources:\n    - {path: data/x.npz, molecul: ethanol}\n")
    with pytest.raises(ConfigError, match=r"^bad.yaml: data.sources entry .*unexpected keyword argument 'molecul'"):
        main(["--config", "bad.yaml"])
    with pytest.raises(ConfigError, match="^--out is each source's path with --config"):
        main(["--config", "many.yaml", "--out", "x.npz"])


def test_command_line_reports_cost_and_drift(tmp_path, capsys):
    out = tmp_path / "out" / "ethanol.npz"
    assert main(["--molecule", "ethanol", "--frames", "20", "--thermalize-steps", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"{out}: 20 frames x 9 atoms of ethanol, 0.5 fs apart" in printed.out
    assert "ms/step" in printed.out and "meV/atom/ps" in printed.out and "max |E_tot - E_tot(0)|" in printed.out
    assert "ethanol: NVE" in printed.err and "ms/step" in printed.err  # the progress bar, on stderr
    assert out.exists()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(molecule="caffeine"), DataError, "unknown molecule 'caffeine'"),
        (dict(structure="nowhere/mol.xyz"), DataError, r"nowhere/mol\.xyz: structure file not found"),
        (dict(molecule="ethanol", frames=0), ConfigError, "frames must be an integer >= 1, got 0"),
        (dict(molecule="ethanol", timestep_fs=-0.5), ConfigError, "timestep_fs must be a positive number"),
        (dict(molecule="ethanol", structure="x.xyz"), ConfigError, "exactly one of"),
        (dict(), ConfigError, "exactly one of"),
    ],
)
def test_bad_input_is_refused_with_a_message(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        simulate(tmp_path / "out.npz", progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_structure_file(tmp_path):
    bad = tmp_path / "broken.xyz"
    bad.write_text("3\ncomment\nO 0 0\n")
    with pytest.raises(DataError, match=r"broken\.xyz: cannot read a structure"):
        simulate(tmp_path / "out.npz", structure=bad, progress=False)


def test_tblite_runs_on_one_openmp_thread_inside_the_guard():
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
    except OSError:
        pytest.skip("no GNU OpenMP runtime on this machine")
    before = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(2)
    try:
        with openmp_threads(1):
            assert gomp.omp_get_max_threads() == 1  # threaded sums differ run to run; chaos makes that a new trajectory
        assert gomp.omp_get_max_threads() == 2
    finally:
        gomp.omp_set_num_threads(before)
