"""Periodic boxes from file to forecast: readers, unwrapping, windows, models, augmentation and rollouts."""

import json

import ase
import ase.io
import mdtraj as md
import numpy as np
import pytest
import torch

from asteroid.cli import main
from asteroid.data import load_trajectory
from asteroid.data.datamodule import TrajectoryDataModule
from asteroid.data.signature import split_summary
from asteroid.data.sources import TrajectorySource
from asteroid.errors import ConfigError, DataError
from asteroid.models import EGNN, EGNO, ESTAG, Asteroid
from asteroid.training.augment import random_rotations, rotate, rotate_windows

from helpers import harmonic_frames, md_topology, tiny_args

CELL = np.array([[9.0, 0.0, 0.0], [1.5, 8.5, 0.0], [-1.0, 0.5, 9.5]])  # triclinic, narrowest width > 5 A cutoff
N_ATOMS = 12


def periodic_frames(T=400, seed=0):
    """Harmonic motion around sites spread over the cell, some at its faces: (true path, path wrapped into the
    cell), both (T, N, 3). The wrapped one jumps by a cell vector whenever an atom crosses a face."""
    rng = np.random.default_rng(seed)
    sites = rng.uniform(0, 1, size=(N_ATOMS, 3))
    sites[:4, 0] = 0.0  # on a face: these atoms cross it back and forth
    vibration = harmonic_frames(T, N_ATOMS, seed) - harmonic_frames(T, N_ATOMS, seed).mean(axis=0)
    true = sites @ CELL + 3 * vibration
    fractional = true @ np.linalg.inv(CELL)
    return true, (fractional - np.floor(fractional)) @ CELL


def save_periodic_npz(path, wrapped, box=CELL):
    np.savez(path, R=wrapped.astype(np.float32), z=np.full(N_ATOMS, 8), dt_fs=0.5, box=box)


# ---- reading ---------------------------------------------------------------------------------------------------
def test_npz_cell_is_read_and_atoms_are_followed_across_the_faces(tmp_path):
    true, wrapped = periodic_frames()
    assert np.abs(np.diff(wrapped, axis=0)).max() > 4.0  # the file jumps
    save_periodic_npz(tmp_path / "box.npz", wrapped)
    traj = load_trajectory(tmp_path / "box.npz")
    assert traj.box.shape == (len(true), 3, 3) and traj.box.dtype == np.float32
    np.testing.assert_allclose(traj.box[5], CELL, atol=1e-5)
    np.testing.assert_allclose(traj.R[0], wrapped[0], atol=1e-5)  # unwrapping starts where the file does
    np.testing.assert_allclose(traj.R - traj.R[0], true - true[0], atol=1e-3)  # and follows the true path
    np.testing.assert_allclose(traj.unwrapped().R, traj.R)  # unwrapped coordinates stay as they are


def test_inspect_reports_the_cell(tmp_path, capsys):
    _, wrapped = periodic_frames(T=20)
    save_periodic_npz(tmp_path / "box.npz", wrapped)
    assert main(["inspect", str(tmp_path / "box.npz")]) == 0
    lengths = " x ".join(f"{length:g}" for length in np.linalg.norm(CELL, axis=1).round(4))
    assert f"box:         periodic, cell vectors {lengths} Angstrom" in capsys.readouterr().out


def test_extxyz_lattice_is_the_cell_and_partial_periodicity_is_refused(tmp_path):
    _, wrapped = periodic_frames(T=20)
    frames = [ase.Atoms("O" * N_ATOMS, positions=R, cell=CELL, pbc=True, info={"dt_fs": 0.5}) for R in wrapped]
    ase.io.write(tmp_path / "box.extxyz", frames)
    traj = load_trajectory(tmp_path / "box.extxyz")
    np.testing.assert_allclose(traj.box[-1], CELL, atol=1e-5)
    for atoms in frames:
        atoms.pbc = [True, True, False]
    ase.io.write(tmp_path / "slab.extxyz", frames)
    with pytest.raises(DataError, match=r"slab.extxyz: periodic in only some directions"):
        load_trajectory(tmp_path / "slab.extxyz")
    open_frames = [ase.Atoms("O" * N_ATOMS, positions=R, info={"dt_fs": 0.5}) for R in wrapped]
    ase.io.write(tmp_path / "open.xyz", open_frames)
    assert load_trajectory(tmp_path / "open.xyz").box is None


def test_mdtraj_cell_in_angstrom_and_the_pdb_placeholder_cell_is_no_cell(tmp_path):
    xyz = harmonic_frames(4, 5) / 10.0  # nm
    lengths = np.tile([2.0, 2.5, 3.0], (4, 1))  # nm
    md.Trajectory(xyz, md_topology(), unitcell_lengths=lengths, unitcell_angles=np.full((4, 3), 90.0)).save_pdb(
        str(tmp_path / "box.pdb")
    )
    traj = load_trajectory(tmp_path / "box.pdb", dt_fs=1.0)
    np.testing.assert_allclose(traj.box[0], np.diag([20.0, 25.0, 30.0]), atol=1e-3)
    md.Trajectory(
        xyz, md_topology(), unitcell_lengths=np.full((4, 3), 0.1), unitcell_angles=np.full((4, 3), 90.0)
    ).save_pdb(str(tmp_path / "placeholder.pdb"))
    assert load_trajectory(tmp_path / "placeholder.pdb", dt_fs=1.0).box is None


@pytest.mark.parametrize(
    "box, problem",
    [
        (np.full((3, 3), np.nan), "periodic box of frame 0 contains NaN or inf"),
        (np.zeros((2, 3)), r"periodic box has shape \(2, 3\)"),
        (np.diag([9.0, 9.0, 0.0]), "periodic box of frame 0 is flat"),
    ],
)
def test_a_bad_cell_is_a_one_line_error_naming_the_file(tmp_path, box, problem):
    _, wrapped = periodic_frames(T=20)
    save_periodic_npz(tmp_path / "bad.npz", wrapped, box=box)
    with pytest.raises(DataError, match=f"bad.npz: the {problem}"):
        load_trajectory(tmp_path / "bad.npz")


# ---- windows -----------------------------------------------------------------------------------------------------
def data_module(tmp_path, sources):
    dm = TrajectoryDataModule(
        sources=sources, history=3, horizon=2, spacing=1, batch_size=4, cache_dir=str(tmp_path / "cache")
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_windows_carry_the_cell_of_their_last_history_frame(tmp_path):
    true, wrapped = periodic_frames()
    save_periodic_npz(tmp_path / "box.npz", wrapped)
    dm = data_module(tmp_path, [TrajectorySource(str(tmp_path / "box.npz"))])
    batch = next(iter(dm.train_dataloader()))
    assert batch["box"].shape == (4, 3, 3)
    torch.testing.assert_close(batch["box"], torch.tensor(CELL, dtype=torch.float32).expand(4, 3, 3))
    assert (batch["history"][:, 1:] - batch["history"][:, :-1]).abs().max() < 1.0  # unwrapped: no jumps
    assert split_summary(dm)["trajectories"][0]["periodic"] is True
    ignored = data_module(tmp_path, [TrajectorySource(str(tmp_path / "box.npz"), periodic=False)])
    assert "box" not in next(iter(ignored.train_dataloader()))


def test_periodic_and_open_trajectories_do_not_mix(tmp_path):
    true, wrapped = periodic_frames()
    save_periodic_npz(tmp_path / "box.npz", wrapped)
    np.savez(tmp_path / "open.npz", R=true.astype(np.float32), z=np.full(N_ATOMS, 8), dt_fs=0.5)
    with pytest.raises(ConfigError, match="mixes periodic trajectories .*box.npz.* with open ones"):
        data_module(tmp_path, [TrajectorySource(str(tmp_path / name)) for name in ("box.npz", "open.npz")])


# ---- models ------------------------------------------------------------------------------------------------------
H, P = 4, 3


def periodic_batch(B=2, dtype=torch.float64):
    true, _ = periodic_frames(T=H * B)
    history = torch.tensor(true, dtype=dtype).view(B, H, N_ATOMS, 3)
    z = torch.randint(1, 9, (B, N_ATOMS))
    return history, z, torch.ones(B, N_ATOMS, dtype=torch.bool), torch.tensor(CELL, dtype=dtype).expand(B, 3, 3)


@pytest.mark.parametrize("cls", [EGNN, ESTAG, EGNO, Asteroid])
def test_models_see_the_same_system_whichever_image_an_atom_is_in(cls):
    torch.manual_seed(0)
    model = cls(H, P, hidden=16, cutoff=5.0).double()
    history, z, mask, box = periodic_batch()
    pred = model(history, z, mask, box=box).pred
    lattice = torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64) @ box[0]  # a whole cell translation
    moved = history.clone()
    moved[:, :, 0] += lattice
    moved_pred = model(moved, z, mask, box=box).pred
    torch.testing.assert_close(moved_pred[:, :, 1:], pred[:, :, 1:], atol=1e-9, rtol=0)
    torch.testing.assert_close(moved_pred[:, :, 0], pred[:, :, 0] + lattice, atol=1e-9, rtol=0)
    open_pred = model(moved, z, mask).pred  # without the cell, atom 0 has lost its neighbours
    assert (open_pred[:, :, 1:] - pred[:, :, 1:]).abs().max() > 1e-6


@pytest.mark.parametrize("cls", [EGNN, Asteroid])
def test_rotating_windows_rotates_the_cell_with_them(cls):
    """Both are exactly equivariant: the rotated periodic system gives the rotated forecast."""
    torch.manual_seed(0)
    model = cls(H, P, hidden=16, cutoff=5.0).double()
    history, z, mask, box = periodic_batch()
    batch = {"history": history, "target": history[:, -P:], "z": z, "mask": mask, "box": box}
    rotation = random_rotations(2, dtype=torch.float64)
    rotated = rotate_windows(batch, rotation)
    torch.testing.assert_close(rotated["box"][1], box[1] @ rotation[1].T)
    pred = model(history, z, mask, box=box).pred
    torch.testing.assert_close(
        model(rotated["history"], z, mask, box=rotated["box"]).pred, rotate(pred, rotation), atol=1e-9, rtol=0
    )


def test_asteroid_with_a_cell_sees_its_images_and_leaves_out_absolute_positions():
    torch.manual_seed(0)
    model = Asteroid(H, P, hidden=16, cutoff=5.0).double().eval()
    history, z, mask, box = periodic_batch()
    pred_open = model(history, z, mask).pred
    huge = 100.0 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3)  # no image within the cutoff
    pred_huge = model(history, z, mask, box=huge).pred
    assert (pred_huge - pred_open).abs().max() > 1e-6  # relative positions left out of global attention
    assert (model(history, z, mask, box=box).pred - pred_huge).abs().max() > 1e-6  # images within reach
    for block in model.encoder.spatial:
        block.global_attention.attention.position_out.weight.detach().zero_()  # an open system now reads none
    torch.testing.assert_close(model(history, z, mask, box=huge).pred, model(history, z, mask).pred, atol=1e-10, rtol=0)


# ---- end to end --------------------------------------------------------------------------------------------------
def test_fit_and_rollout_on_a_periodic_trajectory(tmp_path, monkeypatch):
    _, wrapped = periodic_frames(T=600)
    save_periodic_npz(tmp_path / "toy.npz", wrapped)  # tiny_args trains on this file
    monkeypatch.chdir(tmp_path)
    args = tiny_args(tmp_path, **{"--trainer.max_epochs": "1"})
    assert main(["fit", *args]) == 0
    [version] = (tmp_path / "runs/tiny").glob("version_*")
    summary = json.loads((version / "splits.json").read_text())
    assert summary["trajectories"][0]["periodic"] is True
    roll = ["rollout", *args, "--ckpt_path", "last", "--frames", "6", "--no-progress"]
    assert main([*roll, "--out", "pred.npz"]) == 0
    with np.load(tmp_path / "pred.npz") as data:
        assert data["R"].shape == (1, 6, N_ATOMS, 3) and np.isfinite(data["R"]).all()
        np.testing.assert_allclose(data["box"][0], CELL, atol=1e-5)
    assert main([*roll, "--out", "pred.xyz"]) == 0  # the written cell is read back, so it can start a rollout
    np.testing.assert_allclose(load_trajectory(tmp_path / "pred.xyz").box[0], CELL, atol=1e-5)
    assert main([*roll, "--init", "pred.xyz", "--out", "again.pdb"]) == 0
    np.testing.assert_allclose(load_trajectory(tmp_path / "again.pdb", dt_fs=1.0).box[-1], CELL, atol=1e-2)
