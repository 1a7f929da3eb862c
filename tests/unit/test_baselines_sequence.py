import pytest
import pytorch_lightning as pl
import torch

from asteroid.data.datamodule import TrajectoryDataModule
from asteroid.data.sources import TrajectorySource
from asteroid.errors import ConfigError
from asteroid.models.baselines.extrapolation import LastFrame, LinearExtrapolation, QuadraticExtrapolation
from asteroid.models.baselines.sequence import LSTMForecaster, TransformerForecaster
from asteroid.training.module import ForecastModule

from helpers import write_toy_trajectory

H, P, N = 4, 3, 5
SEQUENCE_MODELS = [
    lambda: LSTMForecaster(H, P, n_atoms=N + 2, hidden=32, layers=2),
    lambda: TransformerForecaster(H, P, n_atoms=N + 2, hidden=32, heads=4, layers=2),
]


def batch(B=3, n=N, dtype=torch.float32):
    history = torch.randn(B, H, n, 3, dtype=dtype) * 2
    target = history[:, -1:] + 0.1 * torch.randn(B, P, n, 3, dtype=dtype)
    return history, torch.full((B, n), 6), torch.ones(B, n, dtype=torch.bool), target


def polynomial_window(times, coefficients):
    """Frames (1, T, N, 3) of positions sum_j c_j t^j at the given times."""
    t = torch.as_tensor(times, dtype=torch.float64)[:, None, None]
    return sum(c[None] * t**j for j, c in enumerate(coefficients))[None]


# ---- no training ------------------------------------------------------------------------------------------------
def test_last_frame_repeats_the_last_history_frame():
    history, z, mask, _ = batch()
    pred = LastFrame(H, P)(history, z, mask).pred
    assert pred.shape == (3, P, N, 3)
    torch.testing.assert_close(pred, history[:, -1:].expand(-1, P, -1, -1), rtol=0, atol=0)


@pytest.mark.parametrize("model_class, degree", [(LinearExtrapolation, 1), (QuadraticExtrapolation, 2)])
@pytest.mark.parametrize(
    "history_offsets, target_offsets",
    [
        (None, None),  # regular layout, unit spacing
        ([0, 4, 8, 12], [16, 20, 24]),  # regular layout, spacing 4: same forecast as unit spacing
        ([0, 3, 5, 6], [9, 40, 3000]),  # irregular
    ],
)
def test_extrapolation_is_exact_on_polynomials_of_its_degree(model_class, degree, history_offsets, target_offsets):
    coefficients = torch.randn(degree + 1, N, 3, dtype=torch.float64)
    times = history_offsets or list(range(H))
    future = target_offsets or list(range(H, H + P))
    history = polynomial_window(times, coefficients)
    model = model_class(H, P, history_offsets, target_offsets)
    pred = model(history, torch.ones(1, N, dtype=torch.long), torch.ones(1, N, dtype=torch.bool)).pred
    torch.testing.assert_close(pred, polynomial_window(future, coefficients), rtol=1e-9, atol=1e-6)


def test_linear_extrapolation_on_the_gmn_layout():
    coefficients = torch.randn(2, N, 3, dtype=torch.float64)
    model = LinearExtrapolation(2, 1, history_offsets=[0, 1], target_offsets=[3000])
    pred = model(
        polynomial_window([0, 1], coefficients), torch.ones(1, N, dtype=torch.long), torch.ones(1, N, dtype=torch.bool)
    ).pred
    torch.testing.assert_close(pred, polynomial_window([3000], coefficients))


def test_extrapolation_ignores_padding_and_rejects_bad_layouts():
    history, z, mask, _ = batch()
    mask[:, -1] = False
    history[:, :, -1] = float("nan")
    pred = QuadraticExtrapolation(H, P)(history, z, mask).pred
    assert torch.isfinite(pred).all()
    with pytest.raises(ConfigError, match="QuadraticExtrapolation fits the last 3 frames but history=2"):
        QuadraticExtrapolation(2, P)
    with pytest.raises(ConfigError, match="must increase strictly"):
        LinearExtrapolation(2, 1, [0, 1], [1])
    with pytest.raises(ConfigError, match="got 3 history_offsets"):
        LinearExtrapolation(2, 1, [0, 1, 2], [3])


# ---- sequence models --------------------------------------------------------------------------------------------
@pytest.fixture(params=SEQUENCE_MODELS, ids=["lstm", "transformer"])
def net(request):
    model = request.param()
    model.set_displacement_scale(torch.tensor([0.1, 0.2, 0.3]))
    return model


def test_sequence_shapes_and_translation_invariance(net):
    history, z, mask, target = batch()
    pred = net(history, z, mask).pred
    assert pred.shape == (3, P, N, 3)
    shift = torch.tensor([30.0, -12.0, 7.0])
    moved = net(history + shift, z, mask).pred
    torch.testing.assert_close(moved, pred + shift, rtol=0, atol=1e-4)
    # also under teacher forcing
    forced = net(history, z, mask, target=target).pred
    moved = net(history + shift, z, mask, target=target + shift).pred
    torch.testing.assert_close(moved, forced + shift, rtol=0, atol=1e-4)


def test_teacher_forcing_is_causal(net):
    history, z, mask, target = batch()
    pred = net(history, z, mask, target=target).pred
    for k in range(P):
        changed = target.clone()
        changed[:, k] += 1.0
        new = net(history, z, mask, target=changed).pred
        torch.testing.assert_close(new[:, : k + 1], pred[:, : k + 1], rtol=0, atol=0)
        if k + 1 < P:
            assert not torch.allclose(new[:, k + 1], pred[:, k + 1])


def test_full_scheduled_sampling_is_the_inference_forecast(net):
    history, z, mask, target = batch()
    net.train()
    sampled = net(history, z, mask, target=target, sampling_prob=1.0).pred
    net.eval()
    torch.testing.assert_close(sampled, net(history, z, mask).pred)
    assert not torch.allclose(net(history, z, mask, target=target).pred[:, 1:], sampled[:, 1:])


def test_padding_atoms_do_not_affect_real_atoms(net):
    history, z, mask, target = batch(n=N)
    alone = net(history, z, mask, target=target).pred
    padded_history = torch.cat([history, torch.full((3, H, 2, 3), float("nan"))], dim=2)
    padded_target = torch.cat([target, 1e3 * torch.randn(3, P, 2, 3)], dim=2)
    padded_mask = torch.cat([mask, torch.zeros(3, 2, dtype=torch.bool)], dim=1)
    padded_z = torch.cat([z, torch.zeros(3, 2, dtype=torch.long)], dim=1)
    pred = net(padded_history, padded_z, padded_mask, target=padded_target).pred
    torch.testing.assert_close(pred[:, :, :N], alone)
    assert torch.isfinite(pred).all()


def test_more_atoms_than_built_for_is_a_config_error(net):
    history, z, mask, _ = batch(n=N + 3)
    with pytest.raises(ConfigError, match="batch has 8 atoms but .* n_atoms=7"):
        net(history, z, mask)


def test_overfitting_one_batch_lowers_the_loss(net):
    history, z, mask, target = batch(B=8)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        pred = net(history, z, mask, target=target, sampling_prob=0.5).pred
        loss = ((pred - target) / net.displacement_scale[None, :, None, None]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


# ---- the Lightning stack ----------------------------------------------------------------------------------------
@pytest.fixture
def datamodule(tmp_path):
    write_toy_trajectory(tmp_path / "toy.npz", n_frames=300)
    return TrajectoryDataModule(
        sources=[TrajectorySource(str(tmp_path / "toy.npz"))],
        history=H,
        horizon=P,
        spacing=2,
        batch_size=8,
        cache_dir=str(tmp_path / "cache"),
    )


def trainer():
    return pl.Trainer(
        fast_dev_run=True, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )


@pytest.mark.parametrize(
    "make_net",
    [
        lambda: LSTMForecaster(H, P, n_atoms=9, hidden=16, layers=1),
        lambda: TransformerForecaster(H, P, n_atoms=9, hidden=16, heads=2, layers=1),
    ],
    ids=["lstm", "transformer"],
)
def test_sequence_models_fit_and_test_in_lightning(datamodule, make_net):
    module = ForecastModule(make_net())
    before = [p.detach().clone() for p in module.parameters()]
    trainer().fit(module, datamodule=datamodule)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    metrics = trainer().test(module, datamodule=datamodule)[0]
    assert metrics["test/mse_mean"] > 0


@pytest.mark.parametrize("net_class", [LastFrame, LinearExtrapolation, QuadraticExtrapolation])
def test_extrapolation_baselines_test_in_lightning(datamodule, net_class):
    metrics = trainer().test(ForecastModule(net_class(H, P)), datamodule=datamodule)[0]
    assert metrics["test/mse_mean"] > 0
    # a rotation of the window rotates the polynomial fit: equivariant up to float error
    assert metrics["test/rotation_error"] < 1e-4


def test_extrapolation_baseline_fits_in_lightning(datamodule):
    """Nothing to learn: fit validates without optimiser steps, and the validation score is the extrapolation's."""
    fitter = trainer()
    fitter.fit(ForecastModule(LinearExtrapolation(H, P)), datamodule=datamodule)
    assert fitter.global_step == 0
    assert torch.isfinite(fitter.callback_metrics["val/mse_mean"])
