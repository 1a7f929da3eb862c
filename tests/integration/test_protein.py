"""Protein trajectories: mdtraj selections on the committed AdK excerpt, the MDAnalysisTests dataset by name.

tests/data/adk_tmd_excerpt.{dcd,psf}: the first 20 frames and first 6 residues (119 atoms, hydrogens included) of
MDAnalysisTests' adk_gbis_tmd-fast1_NAMD.dcd and adk_closed_NAMD.psf (see tests/data/README.md): the same formats
as the dataset. Nothing here uses the network.
"""

import dataclasses
import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

import asteroid.data.mdanalysis as mdanalysis
from asteroid.data import TrajectoryDataModule, load_trajectory
from asteroid.errors import DataError

DATA = Path(__file__).resolve().parents[1] / "data"
EXCERPT, EXCERPT_TOP = DATA / "adk_tmd_excerpt.dcd", DATA / "adk_tmd_excerpt.psf"
ADK = mdanalysis.PROTEIN_DATASETS["mdanalysis:adk_tmd"]
RESIDUES = ["MET", "ARG", "ILE", "ILE", "LEU", "LEU"]


@pytest.fixture
def reference():
    """The excerpt as mdtraj reads it, in Angstrom."""
    traj = md.load(str(EXCERPT), top=str(EXCERPT_TOP))
    return traj, traj.xyz * 10.0


@pytest.mark.parametrize("selection", ["protein and name CA", "protein and not element H", None])
def test_protein_selections_on_the_excerpt(selection, reference):
    traj, R = reference
    atoms = np.arange(traj.n_atoms) if selection is None else traj.topology.select(selection)
    loaded = load_trajectory(EXCERPT, topology=EXCERPT_TOP, selection=selection, dt_fs=ADK.dt_fs)
    assert loaded.R.shape == (20, len(atoms), 3) and loaded.dt_fs == 10.0
    np.testing.assert_allclose(loaded.R, R[:, atoms], atol=1e-4)
    expected_z = [traj.topology.atom(i).element.number for i in atoms]
    np.testing.assert_array_equal(loaded.z, expected_z)


def test_selection_sizes_and_elements(reference):
    traj, _ = reference
    assert [r.name for r in traj.topology.residues] == RESIDUES
    ca = load_trajectory(EXCERPT, topology=EXCERPT_TOP, selection="protein and name CA", dt_fs=10.0)
    heavy = load_trajectory(EXCERPT, topology=EXCERPT_TOP, selection="protein and not element H", dt_fs=10.0)
    every = load_trajectory(EXCERPT, topology=EXCERPT_TOP, dt_fs=10.0)
    assert (ca.n_atoms, every.n_atoms) == (len(RESIDUES), 119)
    assert (ca.z == 6).all()
    assert set(heavy.z) == {6, 7, 8, 16} and heavy.n_atoms == int((every.z > 1).sum())  # MET brings the S


def test_dcd_needs_its_frame_spacing():
    with pytest.raises(DataError, match="adk_tmd_excerpt.dcd.*dt_fs"):
        load_trajectory(EXCERPT, topology=EXCERPT_TOP)


# ---- the dataset by name ---------------------------------------------------------------------------------------
def local_copy(root: Path) -> None:
    """The excerpt placed where a fetched adk_tmd would be (data/mdanalysis/, the package's file names)."""
    trajectory, topology = mdanalysis.protein_files(ADK.name, root)
    trajectory.parent.mkdir(parents=True)
    shutil.copy(EXCERPT, trajectory)
    shutil.copy(EXCERPT_TOP, topology)


def refuse_network(*args, **kwargs):
    raise AssertionError("the test tried to download")


def test_a_local_copy_is_used_without_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(mdanalysis, "download_package", refuse_network)
    local_copy(tmp_path)
    assert mdanalysis.fetch_protein_dataset("MDAnalysis:ADK_TMD", tmp_path) == mdanalysis.protein_files(
        ADK.name, tmp_path
    )


def test_offline_fetch_is_one_clear_error(tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess(
        [],
        1,
        "",
        "ERROR: Could not find a version that satisfies the requirement "
        "MDAnalysisTests==2.11.0 (from versions: none)\n",
    )
    monkeypatch.setattr(mdanalysis.subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(DataError) as error:
        mdanalysis.fetch_protein_dataset(ADK.name, tmp_path)
    message = str(error.value)
    assert "cannot download it from PyPI (pip: ERROR: Could not find a version" in message
    assert f"pip download {mdanalysis.PACKAGE} --no-deps" in message and "\n" not in message
    assert not (tmp_path / "mdanalysis" / ADK.trajectory).exists()


def fake_archive(directory: Path) -> Path:
    """An sdist-like archive holding the excerpt under the dataset's file names."""
    archive = directory / "mdanalysistests-2.11.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, source in ((ADK.trajectory, EXCERPT), (ADK.topology, EXCERPT_TOP)):
            tar.add(source, arcname=f"mdanalysistests-2.11.0/MDAnalysisTests/data/{name}")
    return archive


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_extracts_only_files_that_match_their_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr(mdanalysis, "download_package", lambda directory, by_hand: fake_archive(directory))
    with pytest.raises(DataError, match="adk_gbis_tmd-fast1_NAMD.dcd does not match its SHA-256"):
        mdanalysis.fetch_protein_dataset(ADK.name, tmp_path / "data")  # the excerpt is not the real file
    assert not any((tmp_path / "data" / "mdanalysis").iterdir())  # nothing half-written
    excerpt_as_adk = dataclasses.replace(ADK, trajectory_sha256=sha256(EXCERPT), topology_sha256=sha256(EXCERPT_TOP))
    monkeypatch.setitem(mdanalysis.PROTEIN_DATASETS, ADK.name, excerpt_as_adk)
    trajectory, topology = mdanalysis.fetch_protein_dataset(ADK.name, tmp_path / "data")
    assert trajectory.read_bytes() == EXCERPT.read_bytes() and topology.read_bytes() == EXCERPT_TOP.read_bytes()


def test_datamodule_reads_the_dataset_name_with_its_topology_and_spacing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # known datasets live under ./data
    monkeypatch.setattr(mdanalysis, "download_package", refuse_network)
    local_copy(tmp_path / "data")
    dm = TrajectoryDataModule(
        [{"path": "mdanalysis:adk_tmd", "selection": "protein and name CA"}],
        history=2,
        horizon=1,
        spacing=1,
        split_fractions=(0.5, 0.25, 0.25),
        cache_dir=str(tmp_path / "c"),
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.trajectories[0].dt_fs == ADK.dt_fs
    window = dm.datasets["train"][0]
    assert window["history"].shape == (2, len(RESIDUES), 3) and (window["z"] == 6).all()
    assert isinstance(dm.datasets["train"]._coordinates[0], np.memmap)  # windows stream from the cache


def test_protein_experiment_runs_on_the_excerpt(tmp_path, monkeypatch, capsys):
    from asteroid.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mdanalysis, "download_package", refuse_network)
    local_copy(tmp_path / "data")
    config = Path(__file__).resolve().parents[2] / "experiments" / "adk.yaml"
    code = main(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run",
            "true",
            "--data.history",
            "1",
            "--data.horizon",
            "2",
            "--data.split_fractions",
            json.dumps([0.5, 0.25, 0.25]),
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert code == 0
    assert "Asteroid" in capsys.readouterr().out
