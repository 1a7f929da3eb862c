"""One network for many molecules: mixed-molecule batches (equivariance, permutation, padding), the bond-length head
read from each molecule, which molecules a checkpoint may forecast, and structures from SMILES."""

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

import asteroid
from asteroid.data.dataset import collate_windows
from asteroid.data.signature import DataSignature
from asteroid.errors import ConfigError
from asteroid.models import Asteroid
from asteroid.models.bonded import TransferableBondLengths, plausible_geometry
from asteroid.models.rollout import rollout
from asteroid.simulation.smiles import structure_from_smiles
from asteroid.training.module import ForecastModule

STRUCTURES = Path(asteroid.__file__).parent / "structures"

H, P = 4, 3
SMALL = dict(hidden=16, temporal_hidden=8, vector_channels=8, heads=2, spatial_layers=2, cutoff=3.0, num_rbf=8)


def molecule_window(n: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(1, n, 3, generator=generator, dtype=torch.float64) * 1.2
    frames = start + 0.05 * torch.randn(H + P, n, 3, generator=generator, dtype=torch.float64).cumsum(dim=0)
    z = torch.randint(1, 9, (n,), generator=generator)
    return dict(history=frames[:H], target=frames[H:], z=z, mask=torch.ones(n, dtype=torch.bool))


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = Asteroid(H, P, **SMALL).double().eval()
    net.set_displacement_scale(torch.tensor([0.05, 0.1, 0.15], dtype=torch.float64))
    return net


@pytest.fixture
def two_molecules():
    """A batch of a 5-atom and an 8-atom molecule, padded to 8 as the data loader pads them."""
    return [molecule_window(5, 1), molecule_window(8, 2)]


def forecast(net, windows):
    batch = collate_windows(windows)
    return net(batch["history"], batch["z"], batch["mask"]).pred


def test_each_molecule_forecast_alone_equals_its_forecast_in_a_mixed_batch(model, two_molecules):
    together = forecast(model, two_molecules)
    for i, window in enumerate(two_molecules):
        n = len(window["z"])
        alone = forecast(model, [window])
        torch.testing.assert_close(together[i, :, :n], alone[0], atol=1e-10, rtol=0)


def test_padding_never_changes_a_forecast(model, two_molecules):
    small, large = two_molecules
    batch = collate_windows([small, large])
    batch["history"][0, :, 5:] = torch.nan  # whatever the padding holds
    pred = model(batch["history"], batch["z"], batch["mask"]).pred
    torch.testing.assert_close(pred[0, :, :5], forecast(model, [small])[0], atol=1e-10, rtol=0)
    assert torch.isfinite(pred[:, :, :5]).all()


def rigidly_moved(windows: list[dict], reflect: bool):
    """A rotation (or, reflect, an improper rotation) with a shift, and the windows' histories moved by it."""
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    if reflect:
        q[:, 0] = -q[:, 0]
    shift = torch.tensor([2.0, -5.0, 9.0], dtype=torch.float64)

    def move(positions: torch.Tensor) -> torch.Tensor:
        return positions @ q.T + shift

    return move, [{**w, "history": move(w["history"])} for w in windows]


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_mixed_batch_is_e3_equivariant(model, two_molecules, reflect):
    move, moved = rigidly_moved(two_molecules, reflect)
    expected = move(forecast(model, two_molecules))
    got = forecast(model, moved)
    for i, window in enumerate(two_molecules):
        n = len(window["z"])
        torch.testing.assert_close(got[i, :, :n], expected[i, :, :n], atol=1e-10, rtol=0)


def test_mixed_batch_is_permutation_equivariant_within_each_molecule(model, two_molecules):
    perms = [
        torch.randperm(len(w["z"]), generator=torch.Generator().manual_seed(7 + i)) for i, w in enumerate(two_molecules)
    ]
    permuted = [
        {key: (value[:, perm] if key == "history" else value[perm]) for key, value in w.items() if key != "target"}
        for w, perm in zip(two_molecules, perms)
    ]
    original, got = forecast(model, two_molecules), forecast(model, permuted)
    for i, perm in enumerate(perms):
        torch.testing.assert_close(got[i, :, : len(perm)], original[i, :, perm], atol=1e-10, rtol=0)


ETHANOL, WATER, FLUOROMETHANE = [6, 6, 8, 1, 1, 1, 1, 1, 1], [8, 1, 1], [6, 9, 1, 1, 1]


def record(atoms, transferable_flag) -> DataSignature:
    """A checkpoint's stored record, read back."""
    stored = {
        "history_offsets": [0, 10],
        "target_offsets": [20],
        "heavy_atoms": False,
        "atoms": atoms,
        "dt_fs": [0.5] * len(atoms),
        "periodic": [False] * len(atoms),
        "transferable": transferable_flag,
    }
    trained = DataSignature.from_dict(stored)
    assert trained.as_dict() == {**stored, "content": []}  # what it reads it writes back
    return trained


def test_a_model_for_many_molecules_takes_any_molecule_of_its_elements():
    trained = record([ETHANOL, WATER], True)
    assert trained.transferable
    assert trained.unknown_atoms([8, 1, 1, 1, 6, 1, 1, 1, 6]) is None  # an ordering never seen
    assert trained.unknown_atoms([6, 1, 1, 1, 1]) is None  # methane
    problem = trained.unknown_atoms(FLUOROMETHANE)
    assert problem == "holds F, which the model never saw (it was trained on the elements H, C, O)"
    assert trained.record_of(WATER) == (0.5, False) and trained.record_of([6, 1, 1, 1, 1]) == (0.5, False)


def test_a_model_for_one_molecule_takes_only_that_molecule():
    for trained in (record([ETHANOL], True), record([ETHANOL, WATER], False)):
        assert not trained.transferable
        assert trained.unknown_atoms(ETHANOL) is None
        assert "are not those of any molecule the model was trained on" in trained.unknown_atoms([6, 1, 1, 1, 1])


def test_structure_from_smiles():
    pytest.importorskip("rdkit")
    atoms = structure_from_smiles("CCO")
    assert atoms.get_chemical_formula() == "C2H6O"
    distances = atoms.get_all_distances()[np.triu_indices(len(atoms), 1)]
    assert distances.min() > 0.9  # a real 3D structure, no overlapping atoms
    np.testing.assert_allclose(structure_from_smiles("CCO").positions, atoms.positions)  # reproducible
    with pytest.raises(ConfigError, match="cannot parse it as SMILES"):
        structure_from_smiles("C1CC(")


# ---- the transferable bond head: bond lengths read from each molecule (issue 26) --------------------------------
def thermal_window(name: str, seed: int) -> dict:
    """A window of a shipped structure jiggled by 0.02 A random walks: real bonds, covalent radii find them."""
    atoms = ase.io.read(STRUCTURES / f"{name}.xyz")
    generator = torch.Generator().manual_seed(seed)
    start = torch.as_tensor(atoms.positions, dtype=torch.float64)
    frames = start + 0.02 * torch.randn(H + P, len(atoms), 3, generator=generator, dtype=torch.float64).cumsum(0)
    z = torch.as_tensor(atoms.numbers)
    return dict(history=frames[:H], target=frames[H:], z=z, mask=torch.ones(len(z), dtype=torch.bool))


@pytest.fixture
def bonded_model(model):
    torch.manual_seed(1)
    model.bond_head = TransferableBondLengths(H, P).double()
    return model


@pytest.fixture
def three_windows():
    """Methanol (6 atoms) and two ethanol windows (9 atoms): a padded batch of two molecules."""
    return [thermal_window("pretraining/methanol", 1), thermal_window("ethanol", 2), thermal_window("ethanol", 3)]


def generated(net, windows):
    batch = collate_windows(windows)
    return net.generate(batch["history"], batch["z"], batch["mask"])


def test_transferable_bond_head_reads_each_molecule_alone_as_in_a_mixed_batch(bonded_model, three_windows):
    head, batch = bonded_model.bond_head, collate_windows(three_windows)
    window, atoms = head.bonds(batch["z"], batch["history"], batch["mask"])
    assert window.tolist() == [0] * 5 + [1] * 8 + [2] * 8  # CH3OH's 5 bonds, C2H5OH's 8, none to padding
    together, _ = head.predict(batch["history"], batch["z"], window, atoms)
    alone_batch = collate_windows(three_windows[:1])
    alone, _ = head.predict(
        alone_batch["history"],
        alone_batch["z"],
        *head.bonds(alone_batch["z"], alone_batch["history"], alone_batch["mask"]),
    )
    torch.testing.assert_close(together[:5], alone, atol=1e-12, rtol=0)
    loss = head.nll(batch["history"], batch["target"], batch["z"], batch["mask"])
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_transferable_bonds_project_each_molecule_of_a_batch_onto_its_predicted_lengths(bonded_model, three_windows):
    batch = collate_windows(three_windows)
    batch["history"][0, :, 6:] = torch.nan  # whatever methanol's padding holds
    with torch.no_grad():
        pred = bonded_model.generate(batch["history"], batch["z"], batch["mask"])
        for i, window in enumerate(three_windows):
            n = len(window["z"])
            alone = generated(bonded_model, [window])[0]
            torch.testing.assert_close(pred[i, :, :n], alone, atol=1e-10, rtol=0)
            history = window["history"][None]
            geometry = plausible_geometry(window["z"], history)
            lengths = bonded_model.bond_head.lengths(history, window["z"][None], geometry)  # (1, P, E)
            reached = geometry.distances(alone[None])[..., : geometry.n_bonds]
            torch.testing.assert_close(reached, lengths, atol=geometry.tolerance, rtol=0)
            unprojected = bonded_model(history, window["z"][None], window["mask"][None]).pred
            assert (unprojected - alone).abs().max() > 1e-3  # the projection did move the frames


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_transferable_bonds_keep_forecasts_e3_equivariant(bonded_model, three_windows, reflect):
    move, moved = rigidly_moved(three_windows, reflect)
    with torch.no_grad():
        expected, got = move(generated(bonded_model, three_windows)), generated(bonded_model, moved)
    for i, window in enumerate(three_windows):
        n = len(window["z"])
        torch.testing.assert_close(got[i, :, :n], expected[i, :, :n], atol=1e-6, rtol=0)


def test_a_rollout_of_an_unseen_molecule_imposes_the_bond_lengths_the_head_predicts(bonded_model):
    window = thermal_window("ethanol", 4)
    history, z = window["history"][None].repeat(2, 1, 1, 1), window["z"][None].repeat(2, 1)
    state = {}
    with torch.no_grad():
        frames = rollout(
            bonded_model,
            history,
            z,
            torch.ones_like(z, dtype=torch.bool),
            2 * P,
            thermostat_state=state,
            molecule_from_history=True,
        )
    guard = state["guard"]
    assert guard.n_bonds == 8 and torch.isfinite(frames).all()
    bonds = guard.distances(frames)[..., :8]  # (2, 2P, 8)
    assert (bonds >= guard.lower[..., :8] - 1e-4).all() and (bonds <= guard.upper[..., :8] + 1e-4).all()


def test_a_rollout_reads_each_bond_about_its_starting_history(bonded_model):
    """In a rollout the geometry is the starting history's: each bond is read about its mean there, not about the
    mean of the rollout's own latest frames (which let small errors add up: C-O from 1.42 to 1.24 A)."""
    head, window = bonded_model.bond_head, thermal_window("ethanol", 5)
    history, z = window["history"][None], window["z"][None]
    start = plausible_geometry(window["z"], history)
    with torch.no_grad():
        mean, _ = head.predict(history, z, *head.bonds(z, history, window["mask"][None]))  # about its own mean
        torch.testing.assert_close(
            head.lengths(history, z, start)[0], mean.T.clamp(start.lower[0, :, :8], start.upper[0, :, :8])
        )
        stretched = history * 1.02  # later frames whose bonds drifted 2% long
        about_start = head.lengths(stretched, z, start)
        about_own = head.lengths(stretched, z, plausible_geometry(window["z"], stretched))
    assert (about_start - about_own).abs().max() > 1e-3


def test_transferable_bonds_need_bond_constraints():
    with pytest.raises(
        ConfigError, match="model.transferable_bonds reads the bond lengths that model.bond_constraints"
    ):
        ForecastModule(Asteroid(H, P, **SMALL), transferable_bonds=True)
