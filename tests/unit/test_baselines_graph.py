"""The equivariant graph baselines EGNN, ESTAG and EGNO: interface, E(3) and permutation equivariance, padding,
training, and one pass through the Lightning stack."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from asteroid.data.datamodule import TrajectoryDataModule
from asteroid.data.sources import TrajectorySource
from asteroid.errors import ConfigError, DataError
from asteroid.models.baselines.egnn import EGNN
from asteroid.models.baselines.egno import EGNO, EquivariantTimeConvolution
from asteroid.models.baselines.estag import ESTAG, equivariant_spectrum
from asteroid.training.module import ForecastModule

from helpers import write_toy_trajectory

H, P, N = 4, 3, 6
SMALL = dict(hidden=16, layers=2, cutoff=3.0)
MODELS = [EGNN, ESTAG, EGNO]


def make_model(cls, history=H, horizon=P, **overrides):
    model = cls(history, horizon, **{**SMALL, **overrides})
    model.set_displacement_scale(torch.linspace(0.05, 0.15, horizon))
    return model.eval()


def make_batch(B: int = 3, n: int = N, dtype=torch.float32):
    """Atoms about 1.2 Angstrom apart (some pairs beyond the cutoff), drifting slowly over H + P frames."""
    start = torch.randn(B, 1, n, 3, dtype=dtype) * 1.2
    frames = start + 0.05 * torch.randn(B, H + P, n, 3, dtype=dtype).cumsum(dim=1)
    z = torch.randint(1, 9, (B, n))
    mask = torch.ones(B, n, dtype=torch.bool)
    return frames[:, :H], frames[:, H:], z, mask


def orthogonal(reflect: bool) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] *= -1
    return q


@pytest.mark.parametrize("cls", MODELS)
def test_shapes_and_no_auxiliary_losses(cls):
    model = make_model(cls)
    history, target, z, mask = make_batch()
    trained = model(history, z, mask, target=target, sampling_prob=0.5)
    inferred = model(history, z, mask)
    assert trained.pred.shape == inferred.pred.shape == (3, P, N, 3)
    assert torch.isfinite(inferred.pred).all()
    # Direct forecasters: the target is never looked at.
    torch.testing.assert_close(trained.pred, inferred.pred)
    assert trained.losses == inferred.losses == {}


def test_config_and_data_errors():
    with pytest.raises(ConfigError, match=r"modes=4 must be between 0 \(no time convolution\) and horizon // 2 \+ 1"):
        EGNO(H, P, modes=4)
    with pytest.raises(ConfigError, match="ESTAG needs history >= 2"):
        ESTAG(1, P)
    with pytest.raises(ConfigError, match="layers=0 must be >= 1"):
        EGNN(H, P, layers=0)
    with pytest.raises(ConfigError, match="cutoff=0.0 Angstrom must be positive"):
        EGNO(H, P, cutoff=0.0)
    history, _, z, mask = make_batch()
    z[1, 2] = 40
    with pytest.raises(DataError, match="atomic number 40 exceeds max_z=20"):
        make_model(EGNN, max_z=20)(history, z, mask)


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
@pytest.mark.parametrize("cls", MODELS)
def test_e3_equivariance(cls, reflect):
    model = make_model(cls).double()
    history, _, z, mask = make_batch(dtype=torch.float64)
    matrix, shift = orthogonal(reflect), torch.tensor([3.0, -7.5, 12.0], dtype=torch.float64)
    pred = model(history, z, mask).pred
    moved = model(history @ matrix.T + shift, z, mask).pred
    torch.testing.assert_close(moved, pred @ matrix.T + shift, atol=1e-9, rtol=0)
    assert (pred - history[:, -1:]).abs().max() > 1e-3  # not trivially the last frame


def test_egno_without_time_convolution_as_the_official_md17_run():
    model = make_model(EGNO, modes=0).double()
    assert len(model.convolutions) == 0 and len(model.layers) == SMALL["layers"]
    history, _, z, mask = make_batch(dtype=torch.float64)
    matrix, shift = orthogonal(reflect=False), torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    pred = model(history, z, mask).pred
    torch.testing.assert_close(
        model(history @ matrix.T + shift, z, mask).pred, pred @ matrix.T + shift, atol=1e-9, rtol=0
    )
    assert (pred[:, 0] - pred[:, -1]).abs().max() > 1e-4  # the time embedding still tells the output times apart


@pytest.mark.parametrize("cls", MODELS)
def test_permuting_atoms_permutes_predictions(cls):
    model = make_model(cls)
    history, _, z, mask = make_batch()
    perm = torch.randperm(N)
    pred = model(history, z, mask).pred
    permuted = model(history[:, :, perm], z[:, perm], mask[:, perm]).pred
    torch.testing.assert_close(permuted, pred[:, :, perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", MODELS)
def test_padded_atoms_do_not_change_real_atoms(cls):
    model = make_model(cls)
    history, _, z, mask = make_batch(B=2)
    pred = model(history, z, mask).pred
    extra = 3
    # Garbage in the padding, within the cutoff of real atoms if it were not masked.
    padded_history = torch.cat([history, torch.randn(2, H, extra, 3)], dim=2)
    padded_history[0, :, N] = float("nan")
    padded_z = torch.cat([z, torch.randint(1, 9, (2, extra))], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, extra, dtype=torch.bool)], dim=1)
    padded = model(padded_history, padded_z, padded_mask).pred
    torch.testing.assert_close(padded[:, :, :N], pred, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(padded).all()


def test_spectrum_matches_explicit_dft():
    nodes = torch.randn(4, 6, 3, dtype=torch.float64)  # (V, H, 3)
    edge_index = torch.tensor([[0, 1, 3], [1, 2, 0]])
    amplitude, cross = equivariant_spectrum(nodes, edge_index, torch.tensor(0.5, dtype=torch.float64))
    H = 6
    k = np.arange(1, H // 2 + 1)[:, None]
    basis = np.exp(-2j * np.pi * k * np.arange(H)[None] / H)  # (K, H)
    spectrum = np.einsum("kt,vtc->vkc", basis, nodes.numpy()) / (H * 0.5)
    np.testing.assert_allclose(amplitude.numpy(), np.sqrt((np.abs(spectrum) ** 2).sum(-1)))
    expected = (spectrum[[1, 2, 0]] * spectrum[[0, 1, 3]].conj()).real.sum(-1)
    np.testing.assert_allclose(cross.numpy(), expected, atol=1e-12)


def test_time_convolution_keeping_only_the_mean_mode_averages_over_time():
    convolution = EquivariantTimeConvolution(dim=2, modes=2)
    with torch.no_grad():
        convolution.vector_weight.zero_()
        convolution.vector_weight[0, 0, 0] = 1.0  # mode 0 weight 1 + 0j, mode 1 dropped
    displacement = torch.randn(5, 4, 3)
    _, vectors = convolution(torch.randn(5, 4, 2), displacement)
    torch.testing.assert_close(vectors, displacement.mean(dim=1, keepdim=True).expand(-1, 4, -1))


@pytest.mark.parametrize("cls", MODELS)
def test_overfits_one_batch(cls):
    model = make_model(cls).train()
    history, target, z, mask = make_batch(B=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        loss = ((model(history, z, mask, target).pred - target) / 0.1).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("cls", MODELS)
def test_runs_through_the_lightning_stack(cls, tmp_path):
    write_toy_trajectory(tmp_path / "toy.npz", n_frames=400)
    datamodule = TrajectoryDataModule(
        sources=[TrajectorySource(str(tmp_path / "toy.npz"))],
        history=3,
        horizon=2,
        spacing=4,
        batch_size=8,
        cache_dir=str(tmp_path / "cache"),
    )
    module = ForecastModule(cls(3, 2, **SMALL))
    trainer = pl.Trainer(fast_dev_run=True, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=datamodule)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    trainer.test(module, datamodule=datamodule)
    assert torch.isfinite(trainer.callback_metrics["test/mse_mean"])
    assert trainer.callback_metrics["test/rotation_error"] < 1e-4
