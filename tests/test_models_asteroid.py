"""The full ASTEROID model: interface, ablations, invariances, padding, causality, training."""

import pytest
import torch

from asteroid.errors import ConfigError, DataError
from asteroid.models import Asteroid, ForecastModel

H, P, N = 4, 3, 6
SMALL = dict(hidden=16, heads=2, encoder_layers=1, decoder_layers=1, cutoff=3.0, num_rbf=8)
ABLATIONS = [
    {},
    {"sti": False},
    {"local_attention": False},
    {"global_attention": False},
    {"autoregressive": False},
    {"sti_delay": P + 3},
]


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
    assert trained["pred"].shape == inferred["pred"].shape == (3, P, N, 3)
    assert torch.isfinite(trained["pred"]).all()
    if overrides.get("sti", True):
        assert set(trained["losses"]) == {"sti_primary", "sti_consistency", "sti_conjugate"}
        assert inferred["losses"] == {}  # training terms: not computed for a forecast
        assert all(loss.ndim == 0 and loss.item() >= 0 for loss in trained["losses"].values())
    else:
        assert trained["losses"] == inferred["losses"] == {}


def test_config_errors():
    with pytest.raises(ConfigError, match="local_attention and global_attention are both off"):
        Asteroid(H, P, local_attention=False, global_attention=False)
    with pytest.raises(ConfigError, match="sti_delay=3 must be >= horizon \\+ 1 = 4"):
        Asteroid(H, P, sti_delay=3)
    with pytest.raises(ConfigError, match="hidden=30 is not divisible by heads=4"):
        Asteroid(H, P, hidden=30)
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


@pytest.mark.parametrize("with_target", [False, True])
def test_translation_invariance(with_target):
    model = make_model()
    history, target, z, mask = make_batch()
    shift = torch.tensor([3.0, -7.5, 12.0])
    out = model(history, z, mask, target if with_target else None)
    moved = model(history + shift, z, mask, target + shift if with_target else None)
    torch.testing.assert_close(moved["pred"], out["pred"] + shift, atol=1e-4, rtol=0)
    for name, loss in out["losses"].items():
        torch.testing.assert_close(moved["losses"][name], loss, atol=1e-5, rtol=1e-4)


def test_permuting_atoms_permutes_predictions():
    model = make_model()
    history, target, z, mask = make_batch()
    perm = torch.randperm(N)
    out = model(history, z, mask, target)
    permuted = model(history[:, :, perm], z[:, perm], mask[:, perm], target[:, :, perm])
    torch.testing.assert_close(permuted["pred"], out["pred"][:, :, perm], atol=1e-5, rtol=1e-5)
    for name, loss in out["losses"].items():
        torch.testing.assert_close(permuted["losses"][name], loss, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"autoregressive": False}], ids=["autoregressive", "direct"])
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
    torch.testing.assert_close(padded["pred"][:, :, :N], out["pred"], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(padded["pred"]).all()
    for name, loss in out["losses"].items():
        torch.testing.assert_close(padded["losses"][name], loss, atol=1e-6, rtol=1e-5)


def test_molecules_of_different_size_share_a_batch():
    model = make_model()
    history, target, z, mask = make_batch(B=2)
    small = 4
    mask[1, small:] = False
    together = model(history, z, mask, target)["pred"]
    alone = model(history[1:, :, :small], z[1:, :small], mask[1:, :small], target[1:, :, :small])["pred"]
    torch.testing.assert_close(together[1:, :, :small], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"autoregressive": False}], ids=["autoregressive", "direct"])
def test_changing_a_target_step_never_changes_earlier_steps(overrides):
    model = make_model(**overrides)
    history, target, z, mask = make_batch()
    pred = model(history, z, mask, target)["pred"]
    for k in range(P):
        changed = target.clone()
        changed[:, k] += torch.randn(3, N, 3)
        pred_changed = model(history, z, mask, changed)["pred"]
        # Step k is fed target k-1, so steps <= k do not see target k at all.
        torch.testing.assert_close(pred_changed[:, : k + 1], pred[:, : k + 1], atol=0, rtol=0)
        if model.decoder.autoregressive and k + 1 < P:
            assert not torch.allclose(pred_changed[:, k + 1], pred[:, k + 1])
        if not model.decoder.autoregressive:
            torch.testing.assert_close(pred_changed, pred, atol=0, rtol=0)


def test_scheduled_sampling_extremes():
    model = make_model()
    history, target, z, mask = make_batch()
    inferred = model(history, z, mask)["pred"]
    # Probability 1: every step is fed the model's own prediction, exactly as at inference.
    torch.testing.assert_close(model(history, z, mask, target, sampling_prob=1.0)["pred"], inferred)
    # Teacher forcing on the model's own forecast reproduces that forecast.
    torch.testing.assert_close(model(history, z, mask, inferred, sampling_prob=0.0)["pred"], inferred)
    # Teacher forcing on the truth differs from free running.
    assert not torch.allclose(model(history, z, mask, target)["pred"], inferred)


def test_every_parameter_gets_a_gradient():
    model = make_model().train()
    history, target, z, mask = make_batch()
    out = model(history, z, mask, target, sampling_prob=0.5)
    loss = ((out["pred"] - target) ** 2).mean() + sum(out["losses"].values())
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
        return (((out["pred"] - target) / scale) ** 2).mean() + sum(out["losses"].values())

    first = loss_value().item()
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_value()
        loss.backward()
        optimizer.step()
    assert loss_value().item() < 0.25 * first
