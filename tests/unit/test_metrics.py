import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.data import covalent_radii
from scipy.spatial.transform import Rotation

from asteroid.data.geometry import covalent_bonds, kabsch_rmsd
from asteroid.training.metrics import ForecastMetrics


def scipy_rmsd(pred: np.ndarray, target: np.ndarray) -> float:
    """Reference: best proper rotation of the centred structures from scipy."""
    pred, target = pred - pred.mean(0), target - target.mean(0)
    _, rssd = Rotation.align_vectors(target, pred)
    return rssd / np.sqrt(len(pred))


def all_real(*shape) -> torch.Tensor:
    return torch.ones(shape, dtype=torch.bool)


def test_kabsch_zero_for_rotated_translated_copy():
    pos = torch.randn(4, 12, 3)
    rotation = torch.tensor(Rotation.random(4, random_state=1).as_matrix(), dtype=torch.float32)  # (4, 3, 3)
    moved = pos @ rotation + torch.randn(4, 1, 3) * 5
    rmsd = kabsch_rmsd(moved, pos, all_real(4, 12))
    assert rmsd.shape == (4,)
    assert torch.allclose(rmsd, torch.zeros(4), atol=1e-5)


def test_kabsch_equals_plain_rmsd_when_aligned():
    # a structure scaled about its centroid is best superposed by the identity
    target = torch.randn(3, 10, 3, dtype=torch.float64) * 3
    centroid = target.mean(-2, keepdim=True)
    pred = centroid + 1.05 * (target - centroid)
    plain = (pred - target).square().sum(-1).mean(-1).sqrt()
    assert torch.allclose(kabsch_rmsd(pred, target, all_real(3, 10)), plain, rtol=1e-10)


def test_kabsch_matches_scipy_on_random_data():
    pred, target = torch.randn(2, 3, 20, 3, dtype=torch.float64).unbind(0)
    rmsd = kabsch_rmsd(pred, target, all_real(3, 20))
    expected = [scipy_rmsd(p.numpy(), t.numpy()) for p, t in zip(pred, target)]
    np.testing.assert_allclose(rmsd.numpy(), expected, rtol=1e-10)


def test_kabsch_ignores_padding_atoms():
    pred, target = torch.randn(2, 15, 3).unbind(0)
    mask = torch.arange(15) < 9
    reference = kabsch_rmsd(pred[:9], target[:9], all_real(9))
    pred[9:], target[9:] = 1e6, torch.nan
    assert torch.allclose(kabsch_rmsd(pred, target, mask), reference, rtol=1e-6)


def test_kabsch_excludes_reflection():
    pred = torch.randn(8, 3, dtype=torch.float64)
    mirror = pred * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)  # improper: a rotation cannot undo it
    rmsd = kabsch_rmsd(pred, mirror, all_real(8))
    assert rmsd > 0.1
    assert rmsd.item() == pytest.approx(scipy_rmsd(pred.numpy(), mirror.numpy()), rel=1e-10)


def test_kabsch_nan_for_non_finite_real_atom():
    pred, target = torch.randn(2, 2, 5, 3).unbind(0)
    pred[1, 0] = torch.inf
    rmsd = kabsch_rmsd(pred, target, all_real(2, 5))
    assert torch.isfinite(rmsd[0]) and torch.isnan(rmsd[1])


def test_covalent_bonds_of_ethanol():
    ethanol = molecule("CH3CH2OH")
    bonds = covalent_bonds(ethanol.numbers, ethanol.positions)
    assert bonds.shape == (2, 8)
    assert (bonds[0] < bonds[1]).all()
    symbols = sorted("".join(sorted(ethanol.get_chemical_symbols()[k] for k in pair)) for pair in bonds.T.tolist())
    assert symbols == sorted(["CC", "CO", "HO"] + ["CH"] * 5)


def numpy_bonds(z: np.ndarray, pos: np.ndarray) -> list[tuple[int, int]]:
    return [
        (i, j)
        for i in range(len(z))
        for j in range(i + 1, len(z))
        if np.linalg.norm(pos[i] - pos[j]) < 1.2 * (covalent_radii[z[i]] + covalent_radii[z[j]])
    ]


def direct_metrics(pred, target, z, reference, sizes):
    """Per-step metrics by loops over windows, on the unpadded atoms only."""
    P = pred.shape[1]
    sq, ab, disp, rmsd, bond = (np.zeros(P) for _ in range(5))
    n_atoms = n_bonds = 0
    for b, n in enumerate(sizes):
        p, t = pred[b, :, :n].astype(np.float64), target[b, :, :n].astype(np.float64)
        bonds = numpy_bonds(z[b, :n], reference[b, :n])
        n_atoms += n
        n_bonds += len(bonds)
        for k in range(P):
            sq[k] += ((p[k] - t[k]) ** 2).sum()
            ab[k] += np.abs(p[k] - t[k]).sum()
            disp[k] += np.linalg.norm(p[k] - t[k], axis=-1).sum()
            rmsd[k] += scipy_rmsd(p[k], t[k])
            for i, j in bonds:
                bond[k] += abs(np.linalg.norm(p[k, i] - p[k, j]) - np.linalg.norm(t[k, i] - t[k, j]))
    return {
        "mse": sq / (3 * n_atoms),
        "mae": ab / (3 * n_atoms),
        "rmsd": rmsd / len(sizes),
        "ade": disp / n_atoms,
        "bond": bond / n_bonds,
    }


def mixed_batch(sizes=(9, 6, 9), P=4, noise=0.1):
    """Ethanol and methanol windows padded to 9 atoms, with garbage in the padding."""
    B, N = len(sizes), max(sizes)
    reference = torch.zeros(B, N, 3)
    z = torch.zeros(B, N, dtype=torch.long)
    for b, n in enumerate(sizes):
        mol = molecule("CH3CH2OH" if n == 9 else "CH3OH")
        reference[b, :n] = torch.tensor(mol.positions, dtype=torch.float32)
        z[b, :n] = torch.tensor(mol.numbers)
    mask = torch.arange(N) < torch.tensor(sizes)[:, None]  # (B, N)
    target = reference[:, None] + noise * torch.randn(B, P, N, 3)
    pred = target + noise * torch.randn(B, P, N, 3)
    pad = ~mask[:, None, :, None].expand_as(pred)
    pred[pad], target[pad] = 1e3, -7.0
    reference[~mask] = 0.1  # padding piled on one point must not create bonds
    return pred, target, mask, z, reference


def test_forecast_metrics_match_direct_computation():
    sizes = (9, 6, 9)
    pred, target, mask, z, reference = mixed_batch(sizes)
    metric = ForecastMetrics(horizon=4)
    metric.update(pred, target, mask, z, reference)
    result = metric.compute()
    expected = direct_metrics(pred.numpy(), target.numpy(), z.numpy(), reference.numpy(), sizes)
    for name, values in expected.items():
        assert result[name].shape == (4,)
        np.testing.assert_allclose(result[name].numpy(), values, rtol=1e-6, err_msg=name)
    assert result["ADE"].item() == pytest.approx(expected["ade"].mean(), rel=1e-6)
    assert result["FDE"].item() == pytest.approx(expected["ade"][-1], rel=1e-6)
    for name in ("mse", "mae", "rmsd", "bond"):
        assert result[f"{name}_mean"].item() == pytest.approx(expected[name].mean(), rel=1e-6)


def test_forecast_metrics_mse_is_a_third_of_mean_squared_displacement():
    pred, target, mask, z, reference = mixed_batch((9, 9))
    result = ForecastMetrics(horizon=4)(pred, target, mask, z, reference)
    msd = (pred - target).double().square().sum(-1).mean((0, 2))  # (P,)
    assert torch.allclose(result["mse"], msd / 3)


def test_forecast_metrics_accumulate_over_updates():
    pred, target, mask, z, reference = mixed_batch((9, 6, 9, 6, 6))
    whole = ForecastMetrics(horizon=4)
    whole.update(pred, target, mask, z, reference)
    split = ForecastMetrics(horizon=4)
    for part in (slice(0, 2), slice(2, 5)):
        split.update(pred[part], target[part], mask[part], z[part], reference[part])
    a, b = whole.compute(), split.compute()
    assert (
        a.keys()
        == b.keys()
        == {"mse", "mae", "rmsd", "ade", "bond", "mse_mean", "mae_mean", "rmsd_mean", "bond_mean", "ADE", "FDE"}
    )
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-12), name


def test_forecast_metrics_ignore_padding():
    pred, target, mask, z, reference = mixed_batch((9, 6))
    other_pred, other_target, other_z, other_reference = pred.clone(), target.clone(), z.clone(), reference.clone()
    other_pred[1, :, 6:] = torch.randn(4, 3, 3) * 50
    other_target[1, :, 6:] = torch.nan
    other_z[1, 6:] = 6
    other_reference[1, 6:] = reference[1, :3] + 0.5  # would bond to real atoms if padding counted
    a = ForecastMetrics(horizon=4)(pred, target, mask, z, reference)
    b = ForecastMetrics(horizon=4)(other_pred, other_target, mask, other_z, other_reference)
    for name in a:
        assert torch.allclose(a[name], b[name]), name


def test_forecast_metrics_reject_wrong_horizon():
    pred, target, mask, z, reference = mixed_batch((9,), P=3)
    with pytest.raises(ValueError, match=r"\(B, 4, N, 3\)"):
        ForecastMetrics(horizon=4).update(pred, target, mask, z, reference)
