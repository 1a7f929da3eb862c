"""What keeps long rollouts physical: the bonded-geometry projection, the learned noise, the thermostat and the
removal of rigid motion."""

import math

import numpy as np
import pytest
import torch
from ase.data import atomic_masses
from test_analysis import ETHANOL, vibrating

from asteroid.augment import random_rotations, rotate
from asteroid.errors import ConfigError
from asteroid.models import LastFrame
from asteroid.models.bonded import BondedGeometry, bonded_pairs
from asteroid.models.noise import GaussMarkovNoise, factor_nll, lower_triangular, step_energy, thermostat
from asteroid.models.rollout import remove_rigid_motion, rollout

from helpers import ETHANOL_Z, harmonic_frames

Z = torch.as_tensor(ETHANOL_Z)
MASS = torch.as_tensor(atomic_masses[ETHANOL_Z], dtype=torch.float32)


@pytest.fixture(scope="module")
def geometry():
    bonded = BondedGeometry(history=3, horizon=2)
    bonded.fit(Z, torch.as_tensor(vibrating(2000)))
    return bonded


def test_pairs_are_the_bonds_then_the_one_three_pairs():
    pairs, bonds = bonded_pairs(Z, torch.as_tensor(ETHANOL))
    assert bonds == 8 and len(pairs) == 8 + 13  # ethanol: 8 bonds, 13 angles each with one 1-3 pair, none shared
    assert (pairs[:, 0] < pairs[:, 1]).all() and len({tuple(p) for p in pairs.tolist()}) == len(pairs)


def test_projection_restores_every_length_to_tolerance_and_keeps_the_centre_of_mass(geometry):
    torch.manual_seed(0)
    frames = torch.as_tensor(vibrating(10, seed=3), dtype=torch.float32)[None] + 0.1 * torch.randn(1, 10, 9, 3)
    assert geometry.violation(frames).max() > 0.1
    projected = geometry(frames)
    assert geometry.violation(projected).max() <= geometry.tolerance
    centre = ((projected - frames) * MASS[:, None]).sum(-2)
    torch.testing.assert_close(centre, torch.zeros_like(centre), atol=1e-4, rtol=0)


def test_projection_puts_every_bond_at_its_predicted_length(geometry):
    history = torch.as_tensor(vibrating(40, seed=4)[::10][-3:], dtype=torch.float32)[None]  # (1, 3, 9, 3)
    torch.manual_seed(2)
    frames = history[:, -1:].repeat(1, 2, 1, 1) + 0.05 * torch.randn(1, 2, 9, 3)
    mean = geometry.lengths(history)
    drawn = geometry.lengths(history, sample=True, generator=torch.Generator().manual_seed(0))
    assert mean.shape == drawn.shape == (1, 2, 8) and not torch.equal(mean, drawn)
    for lengths in (mean, drawn):
        projected = geometry(frames, lengths)
        assert geometry.violation(projected, lengths).max() <= geometry.tolerance
        bonds = geometry.distances(projected)[..., : geometry.n_bonds]
        torch.testing.assert_close(bonds, lengths, atol=geometry.tolerance, rtol=0)


def test_projection_leaves_valid_frames_alone_and_is_equivariant(geometry):
    valid = torch.as_tensor(vibrating(50, seed=0)[::7], dtype=torch.float32)[None]  # inside the fitted ranges
    torch.testing.assert_close(geometry(valid), valid)
    torch.manual_seed(1)
    frames = valid + 0.1 * torch.randn_like(valid)
    rotation = random_rotations(1)
    shift = torch.tensor([3.0, -1.0, 2.0])
    torch.testing.assert_close(
        geometry(rotate(frames, rotation) + shift), rotate(geometry(frames), rotation) + shift, atol=1e-4, rtol=0
    )


def test_length_draws_carry_the_learned_correlation_over_the_horizon(geometry):
    """A bond that keeps its phase over the horizon draws steps that follow each other, one that swings back draws
    steps of opposite sign: the coupling below the diagonal of the residual's factor sets which."""
    history = torch.as_tensor(vibrating(40, seed=4)[::10][-3:], dtype=torch.float32)[None]  # (1, 3, 9, 3)
    bias = geometry.length_head[-1].bias
    P = geometry.horizon
    saved = bias.detach().clone()
    try:
        for sign in (1.0, -1.0):
            with torch.no_grad():
                bias[2 * P :] = 5.0 * sign  # step 2 follows step 1's innovation with 5x its own scale
                bias[P : 2 * P] = -3.0  # small steps: no draw reaches the range limits
                mean, factor = geometry.predict_lengths(history)
                draws = torch.stack([geometry.lengths(history, sample=True) for _ in range(400)]) - mean
            assert factor.shape == (1, geometry.n_bonds, P, P) and (factor.triu(1) == 0).all()
            first, second = draws[:, 0, 0], draws[:, 0, 1]  # (400, E) residuals at steps 1 and 2
            correlation = ((first * second).mean(0) / (first.std(0) * second.std(0))).mean()
            assert correlation * sign > 0.9, (sign, correlation)  # 5 / sqrt(26) = 0.98 without the weights' part
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def test_the_factor_likelihood_is_the_multivariate_normal_density():
    torch.manual_seed(0)
    factor = lower_triangular(0.3 * torch.randn(4, 5), torch.randn(4, 10))  # (4, 5, 5)
    values = torch.randn(4, 5, 2)
    expected = -torch.distributions.MultivariateNormal(torch.zeros(5), scale_tril=factor[:, None]).log_prob(values.mT)
    nll = factor_nll(values, factor).sum(-2) + 5 * 0.5 * math.log(2 * math.pi)  # (4, 2)
    torch.testing.assert_close(nll, expected)


def test_projection_gradients_are_finite(geometry):
    frames = (torch.as_tensor(vibrating(4), dtype=torch.float32)[None] + 0.2 * torch.randn(1, 4, 9, 3)).requires_grad_()
    geometry(frames).square().sum().backward()
    assert torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0


def test_fitted_ranges_travel_in_the_state_dict_and_an_unfitted_projection_is_the_identity(geometry):
    fresh = BondedGeometry(history=3, horizon=2)
    frames = torch.randn(2, 9, 3)
    assert fresh(frames) is frames
    fresh.load_state_dict(geometry.state_dict())
    assert fresh.fitted and torch.equal(fresh.upper, geometry.upper) and torch.equal(fresh.pairs, geometry.pairs)
    with pytest.raises(ConfigError, match="bond constraints need one molecule"):
        fresh.check(torch.ones(1, 9, dtype=torch.long))


# ---- the learned noise ---------------------------------------------------------------------------------------------
def noise_inputs(B=3):
    history = torch.as_tensor(harmonic_frames(8, 9), dtype=torch.float32)[None].expand(B, -1, -1, -1)
    return history, Z.expand(B, 9), torch.full((4,), 0.05).cumsum(0)


def test_samples_have_the_forecast_shape_differ_and_repeat_with_the_seed():
    torch.manual_seed(0)
    noise = GaussMarkovNoise(history=8, horizon=4)
    history, z, scale = noise_inputs()
    mean = history[:, -4:]
    draws = [noise.sample(history, z, mean, scale, torch.Generator().manual_seed(seed)) for seed in (5, 5, 6)]
    assert draws[0].shape == mean.shape
    torch.testing.assert_close(draws[0], draws[1])
    assert (draws[0] - draws[2]).abs().mean() > 1e-3  # spread > 0
    # a random walk: the spread grows over the horizon
    many = torch.stack([noise.sample(history, z, mean, scale) for _ in range(200)]) - mean
    spread = many.std(dim=0).mean(dim=(0, 2, 3))
    assert (spread.diff() > 0).all()


def test_the_likelihood_prefers_the_true_scale():
    """Draws from the model itself score better under it than the same draws blown up 3x: the NLL measures fit."""
    torch.manual_seed(0)
    noise = GaussMarkovNoise(history=8, horizon=4)
    history, z, scale = noise_inputs()
    mask = torch.ones(3, 9, dtype=torch.bool)
    mean = history[:, -4:]
    with torch.no_grad():
        target = noise.sample(history, z, mean, scale)
        own = noise.nll(history, z, mask, mean, target, scale)
        wide = noise.nll(history, z, mask, mean, mean + 3 * (target - mean), scale)
    assert own < wide


def test_thermostat_reaches_the_target_step_energy_at_coupling_one():
    previous = torch.as_tensor(ETHANOL, dtype=torch.float32)[None]
    frames = previous[:, None] + 0.05 * torch.randn(1, 4, 9, 3).cumsum(1)
    target = torch.tensor(0.5)
    cooled = thermostat(previous, frames, MASS[None], target, coupling=1.0)
    path = torch.cat([previous[:, None], cooled], dim=1)
    torch.testing.assert_close(step_energy(path, MASS[None]), target[None], rtol=1e-4, atol=0)
    half = thermostat(previous, frames, MASS[None], target, coupling=2.0)  # halfway in energy
    before = step_energy(torch.cat([previous[:, None], frames], dim=1), MASS[None])
    after = step_energy(torch.cat([previous[:, None], half], dim=1), MASS[None])
    torch.testing.assert_close(after, before + (target - before) / 2, rtol=1e-4, atol=0)


def test_rigid_motion_is_stripped_and_internal_motion_kept():
    previous = torch.as_tensor(ETHANOL, dtype=torch.float32)[None]
    internal = torch.as_tensor(vibrating(5, seed=2)[1:], dtype=torch.float32)[None]  # (1, 4, 9, 3) vibrations
    # radians per frame about z, plus a drift; the step is stripped to first order in the angle (as MD strips
    # angular momentum from velocities), so a small angle leaves a residue of order angle^2 x radius
    angle = torch.tensor(0.005) * torch.arange(1, 5)
    cos, sin = torch.cos(angle), torch.sin(angle)
    spin = torch.stack(
        [
            torch.stack([cos, -sin, 0 * cos], -1),
            torch.stack([sin, cos, 0 * cos], -1),
            torch.tensor([0.0, 0.0, 1.0]).expand(4, 3),
        ],
        -2,
    )  # (4, 3, 3)
    centre = (previous * MASS[:, None]).sum(-2) / MASS.sum()
    rigid = (
        torch.einsum("pij,bnj->bpni", spin, previous - centre) + centre + 0.1 * torch.arange(1, 5)[None, :, None, None]
    )
    torch.testing.assert_close(
        remove_rigid_motion(previous, rigid, MASS[None]), previous[:, None].expand_as(rigid), atol=1e-3, rtol=0
    )
    kept = remove_rigid_motion(previous, internal, MASS[None])
    assert (kept - previous[:, None]).norm(dim=-1).mean() > 0.5 * (internal - previous[:, None]).norm(dim=-1).mean()


def test_rollout_strips_a_drifting_forecast_unless_asked_to_keep_it():
    class Drifting(LastFrame):
        def forward(self, history, z, mask, target=None, sampling_prob=0.0, box=None):
            return {"pred": history[:, -1:].repeat(1, self.horizon, 1, 1) + 0.3, "losses": {}}

    history = torch.as_tensor(ETHANOL, dtype=torch.float32)[None, None].repeat(1, 3, 1, 1)
    mask = torch.ones(1, 9, dtype=torch.bool)
    stripped = rollout(Drifting(3, 2), history, Z[None], mask, 4)
    kept = rollout(Drifting(3, 2), history, Z[None], mask, 4, keep_rigid_motion=True)
    torch.testing.assert_close(stripped, history[:, -1:].expand(-1, 4, -1, -1), atol=1e-5, rtol=0)
    drift = torch.tensor([0.3, 0.3, 0.6, 0.6])[None, :, None, None]  # each forecast moves on from the last
    torch.testing.assert_close(kept - history[:, -1:], drift.expand_as(kept))
    with pytest.raises(ConfigError, match="only models trained with model.stochastic"):
        rollout(Drifting(3, 2), history, Z[None], mask, 4, thermostat_coupling=1.0)


# ---- through the commands -------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_stochastic_constrained_model_trains_reports_its_calibration_and_rolls_out_ensembles(
    tmp_path, monkeypatch, capsys
):
    import ase.io

    from asteroid.cli import main
    from asteroid.xtb import structure_path

    from helpers import tiny_args

    structure = ase.io.read(structure_path("ethanol"))
    vibration = harmonic_frames(600, len(structure))
    coordinates = (structure.positions + 0.5 * (vibration - vibration.mean(axis=0))).astype(np.float32)
    np.savez(tmp_path / "toy.npz", R=coordinates, z=structure.numbers, dt_fs=0.5)
    args = tiny_args(
        tmp_path, **{"--trainer.max_epochs": "1", "--model.bond_constraints": "true", "--model.stochastic": "true"}
    )
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *args]) == 0
    printed = capsys.readouterr().out
    assert "spread-skill ratio per step" in printed
    calibration = next(tmp_path.glob("runs/tiny/**/spread_skill.csv")).read_text().splitlines()
    assert calibration[0] == "step,spread,rmse,ratio" and len(calibration) == 3  # horizon 2
    ckpt = next(tmp_path.glob("runs/tiny/**/last.ckpt"))
    stored = torch.load(ckpt, weights_only=False)["state_dict"]
    assert stored["net.noise.step_energy"] > 0 and len(stored["net.bonded.pairs"]) > 0

    def roll(out, *extra):
        return main(
            ["rollout", *args, "--ckpt_path", str(ckpt), "--out", str(out), "--frames", "40", "--no-progress", *extra]
        )

    assert roll(tmp_path / "a.npz", "--samples", "3", "--thermostat", "1") == 0
    assert roll(tmp_path / "b.npz", "--samples", "3", "--thermostat", "1") == 0
    assert "thermostat_coupling_forecasts 1.0" in capsys.readouterr().out
    a, b = np.load(tmp_path / "a.npz")["R"], np.load(tmp_path / "b.npz")["R"]
    assert a.shape == (3, 40, 9, 3) and np.array_equal(a, b)  # one seed, one ensemble
    assert np.abs(a[0] - a[1]).mean() > 1e-3  # the members differ
    assert roll(tmp_path / "mean.npz", "--samples", "2", "--mean", "--thermostat", "0") == 2
    assert "every sample would be the same trajectory" in capsys.readouterr().err
