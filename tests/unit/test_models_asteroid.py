"""The full ASTEROID model: interface, ablations, exact E(3) and permutation equivariance, padding, causality,
the FLOP budget, training."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from asteroid.errors import ConfigError, DataError
from asteroid.models import Asteroid, ForecastModel

H, P, N = 4, 3, 6
SMALL = dict(hidden=16, temporal_hidden=8, vector_channels=8, heads=2, spatial_layers=1, cutoff=3.0, num_rbf=8)
ABLATIONS = [
    {},
    {"sti": True},
    {"local_attention": False},
    {"global_attention": False},
    {"autoregressive": True},
    {"sti": True, "sti_delay": P + 3},
    {"temporal_layers": 0},
    {"latent_tokens": 2},
]
DECODERS = pytest.mark.parametrize("overrides", [{}, {"autoregressive": True}], ids=["direct", "stepwise"])


def make_model(**overrides) -> Asteroid:
    model = Asteroid(H, P, **{**SMALL, **overrides})
    model.set_displacement_scale(torch.tensor([0.05, 0.1, 0.15]))
    return model.eval()


def make_batch(B: int = 3, n: int = N):
    """A molecule-like batch: atoms about 1.2 Angstrom apart, drifting slowly over H + P frames."""
    start = torch.randn(B, 1, n, 3) * 1.2
    frames = start + 0.05 * torch.randn(B, H + P, n, 3).cumsum(dim=1)
    z = torch.randint(1, 9, (B, n))
    mask = torch.ones(B, n, dtype=torch.bool)
    return frames[:, :H], frames[:, H:], z, mask


@pytest.mark.parametrize("overrides", ABLATIONS, ids=lambda o: ",".join(o) or "full")
def test_shapes_and_losses_for_every_ablation(overrides):
    model = make_model(**overrides)
    history, target, z, mask = make_batch()
    trained = model(history, z, mask, target, sampling_prob=0.5)
    inferred = model(history, z, mask)
    assert trained.pred.shape == inferred.pred.shape == (3, P, N, 3)
    assert torch.isfinite(trained.pred).all()
    if overrides.get("sti", False):
        assert set(trained.losses) == {"sti_primary", "sti_consistency", "sti_conjugate"}
        assert inferred.losses == {}  # training terms: not computed for a forecast
        assert all(loss.ndim == 0 and loss.item() >= 0 for loss in trained.losses.values())
    else:
        assert trained.losses == inferred.losses == {}


@pytest.mark.parametrize("overrides", ABLATIONS[1:], ids=lambda o: ",".join(o))
def test_every_ablation_switch_changes_the_forecast(overrides):
    torch.manual_seed(0)
    full = make_model()
    torch.manual_seed(0)
    ablated = make_model(**overrides)
    shared = {
        k: v
        for k, v in full.state_dict().items()
        if k in ablated.state_dict() and ablated.state_dict()[k].shape == v.shape
    }
    ablated.load_state_dict(shared, strict=False)  # same weights wherever both have them
    history, _, z, mask = make_batch()
    assert not torch.allclose(ablated(history, z, mask).pred, full(history, z, mask).pred, atol=1e-6)


def random_orthogonal(reflect: bool) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize(
    "overrides", [{}, {"autoregressive": True}, {"latent_tokens": 2}], ids=["direct", "stepwise", "latent"]
)
@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_exact_e3_equivariance_without_augmentation(overrides, reflect):
    """Rotating or reflecting and translating the history does the same to the forecast, to float64 rounding, and
    leaves the STI losses unchanged: the equivariance is built in, not learned."""
    torch.manual_seed(1)
    model = make_model(**overrides).double()
    history, target, z, mask = (t.double() if t.is_floating_point() else t for t in make_batch())
    q, shift = random_orthogonal(reflect), torch.tensor([3.0, -7.5, 12.0], dtype=torch.float64)
    out = model(history, z, mask, target)
    moved = model(history @ q.T + shift, z, mask, target @ q.T + shift)
    torch.testing.assert_close(moved.pred, out.pred @ q.T + shift, atol=1e-10, rtol=0)
    for name, loss in out.losses.items():
        torch.testing.assert_close(moved.losses[name], loss, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_exact_e3_equivariance_in_a_periodic_cell(reflect):
    """In a cell, the cell turns with the atoms: the forecast turns with them and sees the same images; permuting
    the atoms permutes the forecast."""
    torch.manual_seed(2)
    model = make_model().double()
    history, _, z, mask = (t.double() if t.is_floating_point() else t for t in make_batch())
    box = torch.diag(torch.tensor([6.5, 7.0, 7.5], dtype=torch.float64)).expand(3, 3, 3)
    q = random_orthogonal(reflect)
    pred = model(history, z, mask, box=box).pred
    turned = model(history @ q.T + 1.5, z, mask, box=box @ q.T).pred
    torch.testing.assert_close(turned, pred @ q.T + 1.5, atol=1e-10, rtol=0)
    perm = torch.randperm(N)
    permuted = model(history[:, :, perm], z[:, perm], mask[:, perm], box=box).pred
    torch.testing.assert_close(permuted, pred[:, :, perm], atol=1e-10, rtol=0)
    assert (pred - model(history, z, mask).pred).abs().max() > 1e-6  # the images were seen


def test_flops_per_forecast_within_the_budget():
    """The shipped configuration on ethanol (9 atoms, 8 frames in and 8 out, 5 fs apart: 25 forecasts per simulated
    picosecond) costs at most 110 MFLOP per picosecond, counted by torch's FLOP counter (which, since local attention
    runs as dense products on molecules, counts its sums over neighbours too: 100 MFLOP)."""
    model = Asteroid(8, 8).eval()
    history = torch.randn(1, 1, 9, 3) + 0.05 * torch.randn(1, 8, 9, 3).cumsum(dim=1)
    z = torch.tensor([[6, 6, 8, 1, 1, 1, 1, 1, 1]])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(history, z, torch.ones(1, 9, dtype=torch.bool))
    forecasts_per_ps = 1000.0 / (8 * 5.0)
    assert 1e6 < counter.get_total_flops() * forecasts_per_ps <= 110e6


def test_config_errors():
    with pytest.raises(ConfigError, match="local_attention and global_attention are both off"):
        Asteroid(H, P, local_attention=False, global_attention=False)
    with pytest.raises(ConfigError, match="sti_delay=3 must be >= horizon \\+ 1 = 4"):
        Asteroid(H, P, sti=True, sti_delay=3)
    with pytest.raises(ConfigError, match="hidden=30, temporal_hidden=16 and vector_channels=16 must all be divisible"):
        Asteroid(H, P, hidden=30)
    with pytest.raises(ConfigError, match="spatial_layers=0 >= 1"):
        Asteroid(H, P, spatial_layers=0)
    with pytest.raises(ConfigError, match="history and horizon must be >= 1"):
        Asteroid(0, P)


def test_atomic_number_beyond_embedding_is_a_data_error():
    model = make_model(max_z=10)
    history, _, z, mask = make_batch()
    z[0, 0] = 26
    with pytest.raises(DataError, match="atomic number 26 exceeds max_z=10"):
        model(history, z, mask)


def test_displacement_scale_is_checked_and_saved():
    model = make_model()
    with pytest.raises(DataError, match="horizon step 2 is 0.0 Angstrom"):
        model.set_displacement_scale(torch.tensor([0.1, 0.0, 0.2]))
    restored = Asteroid(H, P, **SMALL)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored.displacement_scale, torch.tensor([0.05, 0.1, 0.15]))


def test_center_uses_last_frame_real_atoms_only():
    history = torch.zeros(1, 2, 3, 3)
    history[0, 1, :, 0] = torch.tensor([1.0, 3.0, float("nan")])  # the third atom is padding
    mask = torch.tensor([[True, True, False]])
    centred, centroid = ForecastModel.center(history, mask)
    torch.testing.assert_close(centroid, torch.tensor([2.0, 0.0, 0.0]).view(1, 1, 1, 3))
    torch.testing.assert_close(centred[0, 1, :2, 0], torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(centred[0, 0, :2, 0], torch.tensor([-2.0, -2.0]))


def test_prediction_is_last_frame_plus_scaled_output():
    model = make_model()
    history = torch.randn(2, H, N, 3)
    output = torch.randn(2, P, N, 3)
    pred = model.displace(history, output)
    torch.testing.assert_close(pred[:, 1], history[:, -1] + 0.1 * output[:, 1])


def test_permuting_atoms_permutes_predictions():
    model = make_model()
    history, target, z, mask = make_batch()
    perm = torch.randperm(N)
    out = model(history, z, mask, target)
    permuted = model(history[:, :, perm], z[:, perm], mask[:, perm], target[:, :, perm])
    torch.testing.assert_close(permuted.pred, out.pred[:, :, perm], atol=1e-5, rtol=1e-5)
    for name, loss in out.losses.items():
        torch.testing.assert_close(permuted.losses[name], loss, atol=1e-6, rtol=1e-5)


@DECODERS
def test_padded_atoms_do_not_change_real_atoms(overrides):
    model = make_model(**overrides)
    history, target, z, mask = make_batch(B=2)
    out = model(history, z, mask, target)
    extra = 3
    # Garbage in the padding, close enough to real atoms to be within the cutoff if it were not masked.
    padded_history = torch.cat([history, torch.randn(2, H, extra, 3)], dim=2)
    padded_history[0, :, N] = float("nan")
    padded_target = torch.cat([target, torch.randn(2, P, extra, 3)], dim=2)
    padded_target[1, :, N + 1] = float("nan")
    padded_z = torch.cat([z, torch.zeros(2, extra, dtype=z.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, extra, dtype=torch.bool)], dim=1)
    padded = model(padded_history, padded_z, padded_mask, padded_target)
    torch.testing.assert_close(padded.pred[:, :, :N], out.pred, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(padded.pred).all()
    for name, loss in out.losses.items():
        torch.testing.assert_close(padded.losses[name], loss, atol=1e-6, rtol=1e-5)


def test_molecules_of_different_size_share_a_batch():
    model = make_model()
    history, target, z, mask = make_batch(B=2)
    small = 4
    mask[1, small:] = False
    together = model(history, z, mask, target).pred
    alone = model(history[1:, :, :small], z[1:, :small], mask[1:, :small], target[1:, :, :small]).pred
    torch.testing.assert_close(together[1:, :, :small], alone, atol=1e-5, rtol=1e-5)


@DECODERS
def test_changing_a_target_step_never_changes_earlier_steps(overrides):
    model = make_model(**overrides)
    history, target, z, mask = make_batch()
    pred = model(history, z, mask, target).pred
    for k in range(P):
        changed = target.clone()
        changed[:, k] += torch.randn(3, N, 3)
        pred_changed = model(history, z, mask, changed).pred
        # Step k is fed target k-1, so steps <= k do not see target k at all.
        torch.testing.assert_close(pred_changed[:, : k + 1], pred[:, : k + 1], atol=0, rtol=0)
        if model.autoregressive and k + 1 < P:
            assert not torch.allclose(pred_changed[:, k + 1], pred[:, k + 1])
        if not model.autoregressive:
            torch.testing.assert_close(pred_changed, pred, atol=0, rtol=0)


def test_scheduled_sampling_extremes():
    model = make_model(autoregressive=True)
    history, target, z, mask = make_batch()
    inferred = model(history, z, mask).pred
    # Probability 1: every step is fed the model's own prediction, exactly as at inference.
    torch.testing.assert_close(model(history, z, mask, target, sampling_prob=1.0).pred, inferred)
    # Teacher forcing on the model's own forecast reproduces that forecast.
    torch.testing.assert_close(model(history, z, mask, inferred, sampling_prob=0.0).pred, inferred)
    # Teacher forcing on the truth differs from free running.
    assert not torch.allclose(model(history, z, mask, target).pred, inferred)


@DECODERS
def test_every_parameter_gets_a_gradient(overrides):
    model = make_model(**overrides).train()
    history, target, z, mask = make_batch()
    out = model(history, z, mask, target, sampling_prob=0.5)
    loss = ((out.pred - target) ** 2).mean() + sum(out.losses.values())
    loss.backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # Embedding rows of atomic numbers absent from the batch get no gradient; whole tensors must.
    assert silent == []


def test_overfits_one_batch():
    model = make_model().train()
    history, target, z, mask = make_batch(B=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scale = model.displacement_scale[None, :, None, None]

    def loss_value():
        out = model(history, z, mask, target)
        return (((out.pred - target) / scale) ** 2).mean() + sum(out.losses.values())

    first = loss_value().item()
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_value()
        loss.backward()
        optimizer.step()
    assert loss_value().item() < 0.25 * first
