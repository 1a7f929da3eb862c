"""What keeps long rollouts physical: the bonded-geometry projection, the learned noise, the thermostat and the
removal of rigid motion."""

import math

import numpy as np
import pytest
import torch
from ase.data import atomic_masses

import asteroid.models.bonded as bonded_module
import asteroid.models.rollout as rollout_module
from asteroid.errors import ConfigError
from asteroid.fileio import scratch_array
from asteroid.models import LastFrame
from asteroid.models.base import Forecast
from asteroid.models.bonded import (
    PLAUSIBLE_BOND_STRETCH,
    RANGE_TOLERANCE,
    BondedGeometry,
    bonded_pairs,
    plausible_geometry,
)
from asteroid.models.noise import GaussMarkovNoise, factor_nll, lower_triangular, step_energy, thermostat
from asteroid.models.rollout import remove_rigid_motion, rollout
from asteroid.training.augment import random_rotations, rotate

from helpers import ETHANOL_MINIMUM as ETHANOL
from helpers import ETHANOL_Z, harmonic_frames, vibrating

Z = torch.as_tensor(ETHANOL_Z)
MASS = torch.as_tensor(atomic_masses[ETHANOL_Z], dtype=torch.float32)
# The projection before issue 25, kept here as the reference the Newton solve is checked against: Jacobi-style SHAKE,
# every pair off its range moved back along its own axis by inverse mass, over-relaxed, about 100 rounds to 1e-3 A.
JACOBI_TOLERANCE = 1e-3


def jacobi_projection(bonded, frames, lower, upper, rounds=200, relaxation=1.5):
    i, j = bonded.pairs[:, 0], bonded.pairs[:, 1]
    share_i = bonded.inverse_mass[i] / (bonded.inverse_mass[i] + bonded.inverse_mass[j])
    moving = torch.ones(frames.shape[:-2])
    for iteration in range(1, rounds + 1):
        bond = frames[..., j, :] - frames[..., i, :]
        length = bond.norm(dim=-1).clamp_min(1e-6)
        wanted = torch.minimum(torch.maximum(length, lower), upper)
        active = (wanted != length).to(frames.dtype)
        per_atom = torch.zeros(*frames.shape[:-1]).index_add(-1, i, active).index_add(-1, j, active)
        shared = torch.maximum(per_atom[..., i], per_atom[..., j]).clamp_min(1)
        step = bond * (relaxation * (length - wanted) / (length * shared) * moving[..., None])[..., None]
        move = torch.zeros_like(frames).index_add(-2, i, step * share_i[:, None])
        frames = frames + move.index_add(-2, j, -step * (1 - share_i)[:, None])
        if iteration % 10 == 0:
            distances = bonded.distances(frames)
            moving = moving * (torch.maximum(lower - distances, distances - upper).amax(-1) > JACOBI_TOLERANCE)
            if not moving.any():
                break
    return frames


BENZENE_RING = [[1.39 * math.cos(k * math.pi / 3), 1.39 * math.sin(k * math.pi / 3), 0.0] for k in range(6)]


@pytest.fixture(scope="module")
def geometry():
    bonded = BondedGeometry(history=3, horizon=2)
    bonded.fit(Z, torch.as_tensor(vibrating(2000)))
    return bonded


def test_pairs_are_the_bonds_then_the_one_three_pairs():
    pairs, bonds = bonded_pairs(Z, torch.as_tensor(ETHANOL))
    assert bonds == 8 and len(pairs) == 8 + 13  # ethanol: 8 bonds, 13 angles each with one 1-3 pair, none shared
    assert (pairs[:, 0] < pairs[:, 1]).all() and len({tuple(p) for p in pairs.tolist()}) == len(pairs)


def assert_projected(geometry, frames, lengths):
    """Every bond at its length to the tolerance, every 1-3 pair within its range to RANGE_TOLERANCE."""
    bonds = geometry.distances(frames)[..., : geometry.n_bonds]
    assert (bonds - lengths).abs().max() <= geometry.tolerance
    lower, upper = geometry._targets(frames, lengths)
    assert geometry._outside(frames, lower, upper).max() <= RANGE_TOLERANCE


def test_projection_restores_every_length_and_keeps_the_centre_of_mass(geometry):
    torch.manual_seed(0)
    true = torch.as_tensor(vibrating(10, seed=3), dtype=torch.float32)[None]
    frames = true + 0.05 * torch.randn(1, 10, 9, 3)
    lengths = geometry.distances(true)[..., : geometry.n_bonds]
    assert geometry.violation(frames, lengths).max() > 0.05
    projected = geometry(frames, lengths)
    assert_projected(geometry, projected, lengths)
    centre = ((projected - frames) * MASS[:, None]).sum(-2)
    torch.testing.assert_close(centre, torch.zeros_like(centre), atol=1e-4, rtol=0)


def test_without_target_lengths_bonds_go_to_the_nearest_point_of_their_range(geometry):
    torch.manual_seed(1)
    frames = torch.as_tensor(vibrating(10, seed=3), dtype=torch.float32)[None] + 0.05 * torch.randn(1, 10, 9, 3)
    projected = geometry(frames)
    nearest = geometry.distances(frames)[..., : geometry.n_bonds].clamp(
        geometry.lower[: geometry.n_bonds], geometry.upper[: geometry.n_bonds]
    )
    assert_projected(geometry, projected, nearest)


def test_projection_puts_every_bond_at_its_predicted_length(geometry):
    history = torch.as_tensor(vibrating(40, seed=4)[::10][-3:], dtype=torch.float32)[None]  # (1, 3, 9, 3)
    torch.manual_seed(2)
    frames = history[:, -1:].repeat(1, 2, 1, 1) + 0.05 * torch.randn(1, 2, 9, 3)
    with torch.no_grad():
        mean = geometry.lengths(history)
        drawn = geometry.lengths(history, sample=True, generator=torch.Generator().manual_seed(0))
        assert mean.shape == drawn.shape == (1, 2, 8) and not torch.equal(mean, drawn)
        for lengths in (mean, drawn):
            assert_projected(geometry, geometry(frames, lengths), lengths)


@torch.no_grad()
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


@torch.no_grad()
def test_the_newton_solve_converges_in_a_few_iterations_and_agrees_with_the_jacobi_projection():
    """Forecast-sized errors (0.01 A per coordinate) about true frames, projected onto the true bond lengths: the bonds
    reach the tolerance and the 1-3 pairs their ranges (the Jacobi projection before took about 100 rounds to 1e-3),
    the result lies where the Jacobi projection puts the frames (apart by under a tenth of how far they moved), and
    it is as close to the truth."""
    bonded = BondedGeometry(history=3, horizon=8, max_iterations=12)
    bonded.fit(Z, torch.as_tensor(vibrating(2000)))
    torch.manual_seed(0)
    true = torch.as_tensor(vibrating(512, seed=3), dtype=torch.float32).reshape(64, 8, 9, 3)
    frames = true + 0.01 * torch.randn_like(true)
    lengths = bonded.distances(true)[..., : bonded.n_bonds]
    projected = bonded(frames, lengths)
    assert_projected(bonded, projected, lengths)
    relaxed = jacobi_projection(bonded, frames, *bonded._targets(frames, lengths))
    moved = (projected - frames).norm(dim=-1).mean()
    assert (projected - relaxed).norm(dim=-1).mean() < 0.1 * moved
    error = {name: (result - true).norm(dim=-1).mean() for name, result in [("newton", projected), ("jacobi", relaxed)]}
    assert error["newton"] < (frames - true).norm(dim=-1).mean() and error["newton"] < 1.05 * error["jacobi"], error


@torch.no_grad()
def test_the_fixed_newton_rounds_reach_the_constraints_where_the_alternation_does(monkeypatch):
    """`settle` (the fixed semi-smooth Newton rounds over bonds and 1-3 pairs, compiled into a rollout's step): on
    forecast-sized errors it alone leaves nearly every frame within tolerance, equivariantly and frame by frame, and
    the projection with it ends where the alternation alone ends (up to a small fraction of how far they moved)."""
    bonded = BondedGeometry(history=3, horizon=8)
    bonded.fit(Z, torch.as_tensor(vibrating(2000)))
    torch.manual_seed(0)
    true = torch.as_tensor(vibrating(64, seed=3), dtype=torch.float32).reshape(8, 8, 9, 3)  # 8 forecasts of 8 frames
    frames = true + 0.03 * torch.randn_like(true)
    lengths = bonded.distances(true)[..., : bonded.n_bonds]
    lower, upper = bonded._targets(frames, lengths)
    assert (bonded._outside(frames, lower, upper) > RANGE_TOLERANCE).float().mean() > 0.2  # ranges are at stake
    settled, off = bonded.settle(frames, lengths)  # (B, P, N, 3), (B, P)
    within = ((bonded.distances(settled)[..., : bonded.n_bonds] - lengths).abs().amax(-1) <= bonded.tolerance) & (
        bonded._outside(settled, lower, upper) <= RANGE_TOLERANCE
    )
    assert within[~off].all() and (~off).float().mean() >= 0.95, (~off).float().mean()
    one_by_one = torch.cat([bonded.settle(frames[i : i + 1], lengths[i : i + 1])[0] for i in range(len(frames))])
    torch.testing.assert_close(one_by_one, settled, atol=1e-6, rtol=0)
    rotation, shift = random_rotations(1), torch.tensor([3.0, -1.0, 2.0])
    torch.testing.assert_close(
        bonded.settle(rotate(frames, rotation) + shift, lengths)[0],
        rotate(settled, rotation) + shift,
        atol=1e-4,
        rtol=0,
    )

    projected = bonded(frames, lengths, (settled, off))
    assert_projected(bonded, projected, lengths)
    monkeypatch.setattr(bonded_module, "SETTLE_MAX_WORK", 0)  # the alternation alone, as before the fixed rounds
    alternated = bonded(frames, lengths)
    assert_projected(bonded, alternated, lengths)
    apart = (projected - alternated).norm(dim=-1).amax(-1)  # (B, P) largest atom
    moved = (alternated - frames).norm(dim=-1).amax(-1)
    assert apart.median() < 0.02 * moved.median() and (apart < 0.2 * moved).all(), (apart.max(), moved.median())
    # and no further from the forecast (mass-weighted), as a projection should be
    cost = {
        name: ((x - frames).norm(dim=-1) ** 2 * MASS).sum() for name, x in [("settle", projected), ("alt", alternated)]
    }
    assert cost["settle"] <= 1.01 * cost["alt"], cost


@torch.no_grad()
def test_frames_too_many_for_the_fixed_rounds_end_where_they_end_frame_by_frame(monkeypatch):
    """A batch too large for the fixed rounds solves the bonds of all its frames in fixed rounds of their own, and only
    the few then outside a 1-3 range take the fixed rounds: each frame ends where a batch small enough for the rounds
    takes it."""
    bonded = BondedGeometry(history=3, horizon=8)
    bonded.fit(Z, torch.as_tensor(vibrating(2000)))
    torch.manual_seed(0)
    true = torch.as_tensor(vibrating(64, seed=3), dtype=torch.float32).reshape(8, 8, 9, 3)
    frames = true + 0.03 * torch.randn_like(true)
    lengths = bonded.distances(true)[..., : bonded.n_bonds]
    one_by_one = torch.cat([bonded(frames[i : i + 1], lengths[i : i + 1]) for i in range(len(frames))])
    rounds = []
    monkeypatch.setattr(bonded_module, "SETTLE_MAX_WORK", 48 * len(bonded.pairs) ** 3)  # 64 frames are too many
    monkeypatch.setattr(bonded, "_settle", lambda frames, *args: rounds.append(len(frames)) or settle(frames, *args))
    settle = BondedGeometry._settle.__get__(bonded)
    together = bonded(frames, lengths)
    assert len(rounds) == 1 and 0 < rounds[0] < 48, rounds  # the rounds ran once, on the frames left outside
    assert_projected(bonded, together, lengths)
    torch.testing.assert_close(together, one_by_one, atol=2e-3, rtol=0)  # the same solution, to the tolerances


@torch.no_grad()
def test_the_bonds_fixed_rounds_reach_the_newton_solution_equivariantly_in_a_chain_and_a_ring():
    """`_bond_rounds` (a batch's bonds in fixed rounds, LINCS's expansion for the solve, compiled with the network):
    on forecast-sized errors every bond reaches its length to the tolerance, where the Newton solve with its
    Cholesky puts it (to twice the tolerance, where each stops), in ethanol's chain and in a benzene ring (whose
    coupled bonds the expansion converges on more slowly), and a rotated, shifted batch gives the rotated, shifted
    frames."""
    torch.manual_seed(0)
    ring = torch.as_tensor(BENZENE_RING)
    benzene = BondedGeometry(history=3, horizon=1)
    benzene.fit(torch.full((6,), 6), ring[None] * (1 + 0.02 * torch.linspace(-1, 1, 5))[:, None, None])
    ethanol = BondedGeometry(history=3, horizon=8)
    ethanol.fit(Z, torch.as_tensor(vibrating(2000)))
    true_ethanol = torch.as_tensor(vibrating(512, seed=3), dtype=torch.float32)
    for bonded, true in ((ethanol, true_ethanol), (benzene, ring * (1 + 0.01 * torch.randn(512, 1, 1)))):
        frames = true + 0.03 * torch.randn_like(true)
        lengths = bonded.distances(true)[:, : bonded.n_bonds]  # (F, E)
        rounds = bonded._bond_rounds(frames, lengths)
        incidence, coupling = bonded.incidence()
        E = bonded.n_bonds
        newton = bonded._solve_bonds(frames.clone(), lengths, incidence[:E], coupling[:E, :E])
        gap = (bonded.distances(rounds)[:, :E] - lengths).abs().amax(-1)
        assert gap.max() <= bonded.tolerance, gap.max()
        torch.testing.assert_close(rounds, newton, atol=2 * bonded.tolerance, rtol=0)
        assert (rounds - frames).norm(dim=-1).mean() > 20 * bonded.tolerance  # the frames did have to move
        rotation, shift = random_rotations(1), torch.tensor([3.0, -1.0, 2.0])
        torch.testing.assert_close(
            bonded._bond_rounds(rotate(frames, rotation) + shift, lengths),
            rotate(rounds, rotation) + shift,
            atol=1e-4,
            rtol=0,
        )


@torch.no_grad()
def test_a_planar_ring_far_off_its_constraints_projects_to_finite_frames_within_tolerance():
    """Benzene with every pair out of range: more pairs than in-plane degrees of freedom (the redundancy that made a
    Newton active set over every pair cycle); the bonds are solved, the 1-3 pairs pushed into range between."""
    ring = torch.as_tensor(BENZENE_RING)
    bonded = BondedGeometry(history=3, horizon=1)
    bonded.fit(torch.full((6,), 6), ring[None] * (1 + 0.02 * torch.linspace(-1, 1, 5))[:, None, None])
    torch.manual_seed(0)
    frames = ring * 1.1 + 0.03 * torch.randn(32, 6, 3)
    projected = bonded(frames)
    assert torch.isfinite(projected).all() and bonded.violation(projected).max() <= JACOBI_TOLERANCE


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


def test_training_projection_gradients_are_finite_and_reach_the_predicted_lengths(geometry):
    frames = (torch.as_tensor(vibrating(4), dtype=torch.float32)[None] + 0.2 * torch.randn(1, 4, 9, 3)).requires_grad_()
    history = torch.as_tensor(vibrating(40, seed=4)[::10][-3:], dtype=torch.float32)[None].expand(4, -1, -1, -1)
    geometry(frames.transpose(0, 1), geometry.lengths(history)[:, :1]).square().sum().backward()
    assert torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0
    head = geometry.length_head[-1].weight.grad
    assert head is not None and torch.isfinite(head).all() and head.abs().sum() > 0
    geometry.zero_grad()


def test_training_gradients_are_those_of_the_projection_near_the_constraints():
    """Near the constraints (1e-3 A off) the implicit gradient matches finite differences of the projection itself,
    for the frames and for the target bond lengths."""
    bonded = BondedGeometry(history=3, horizon=1, tolerance=1e-10, max_iterations=60)
    bonded.fit(Z, torch.as_tensor(vibrating(2000)))
    bonded.double()
    true = torch.as_tensor(vibrating(1, seed=3), dtype=torch.float64)
    torch.manual_seed(0)
    frames, weights = true + 1e-3 * torch.randn_like(true), torch.randn_like(true)
    lengths = bonded.distances(true)[..., : bonded.n_bonds] + 1e-3

    def loss(frames, lengths):
        return (bonded(frames, lengths) * weights).sum()

    x, d = frames.clone().requires_grad_(), lengths.clone().requires_grad_()
    loss(x, d).backward()
    eps = 1e-6
    with torch.no_grad():
        numeric_frames = torch.zeros_like(frames).flatten()
        for k in range(frames.numel()):
            step = torch.zeros_like(frames).flatten()
            step[k] = eps
            step = step.view_as(frames)
            numeric_frames[k] = (loss(frames + step, lengths) - loss(frames - step, lengths)) / (2 * eps)
        numeric_lengths = torch.stack(
            [
                (loss(frames, lengths + eps * e) - loss(frames, lengths - eps * e)) / (2 * eps)
                for e in torch.eye(bonded.n_bonds, dtype=torch.float64)[:, None]
            ]
        )
    torch.testing.assert_close(x.grad.flatten(), numeric_frames, atol=0.03, rtol=0.02)
    torch.testing.assert_close(d.grad.flatten(), numeric_lengths.flatten(), atol=0.03, rtol=0.02)


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


def test_rigid_motion_of_a_linear_molecule_is_stripped_without_nan():
    """A linear molecule's inertia is singular along its axis: the damped solve must still strip a tumble."""
    mass = torch.tensor([12.011, 15.999, 15.999])
    previous = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 1.16], [0.0, 0.0, -1.16]]])  # CO2 along z
    angle = 0.004 * torch.arange(1, 4)  # a tumble about x, radians per frame
    tumble = torch.stack(
        [
            previous[0, :, 0].expand(3, -1),
            -torch.sin(angle)[:, None] * previous[0, :, 2],
            torch.cos(angle)[:, None] * previous[0, :, 2],
        ],
        -1,
    )[None]  # (1, 3, 3, 3)
    stripped = remove_rigid_motion(previous, tumble, mass[None])
    assert torch.isfinite(stripped).all()
    torch.testing.assert_close(stripped, previous[:, None].expand_as(tumble), atol=1e-4, rtol=0)


def test_rollout_strips_a_drifting_forecast_unless_asked_to_keep_it():
    class Drifting(LastFrame):
        def forward(self, history, z, mask, target=None, sampling_prob=0.0, box=None):
            return Forecast(history[:, -1:].repeat(1, self.horizon, 1, 1) + 0.3, {})

    history = torch.as_tensor(ETHANOL, dtype=torch.float32)[None, None].repeat(1, 3, 1, 1)
    mask = torch.ones(1, 9, dtype=torch.bool)
    stripped = rollout(Drifting(3, 2), history, Z[None], mask, 4)
    kept = rollout(Drifting(3, 2), history, Z[None], mask, 4, keep_rigid_motion=True)
    torch.testing.assert_close(stripped, history[:, -1:].expand(-1, 4, -1, -1), atol=1e-5, rtol=0)
    drift = torch.tensor([0.3, 0.3, 0.6, 0.6])[None, :, None, None]  # each forecast moves on from the last
    torch.testing.assert_close(kept - history[:, -1:], drift.expand_as(kept))
    with pytest.raises(ConfigError, match="only models trained with model.stochastic"):
        rollout(Drifting(3, 2), history, Z[None], mask, 4, thermostat_coupling=1.0)


def test_a_rollout_into_an_array_on_disk_writes_the_frames_it_returns_otherwise(tmp_path):
    """`into` (a memory map in `asteroid rollout`): the same frames, a forecast cut short at the end included."""
    net = still_net_with_noise()
    history = torch.as_tensor(vibrating(30, seed=1)[::10], dtype=torch.float32)[None].repeat(2, 1, 1, 1)
    mask = torch.ones(2, 9, dtype=torch.bool)
    torch.manual_seed(3)
    in_memory = rollout(net, history, Z.expand(2, 9), mask, 5)  # 2 frames per forecast: the third is cut to one
    torch.manual_seed(3)
    with scratch_array(tmp_path, (2, 5, 9, 3)) as on_disk:
        assert rollout(net, history, Z.expand(2, 9), mask, 5, into=on_disk) is on_disk
        np.testing.assert_array_equal(np.asarray(on_disk), in_memory.numpy())
    assert list(tmp_path.iterdir()) == []  # the scratch file has no name and is gone


class Still(LastFrame):
    """The last frame held: whatever moves in a rollout of it comes from the noise head's draws."""

    def forward(self, history, z, mask, target=None, sampling_prob=0.0, box=None):
        return Forecast(history[:, -1:].repeat(1, self.horizon, 1, 1), {})


def still_net_with_noise() -> Still:
    """3 frames in, 2 out, an untrained noise head to draw from (seeded)."""
    torch.manual_seed(0)
    net = Still(3, 2).eval()
    net.set_displacement_scale(torch.tensor([0.03, 0.06]))
    net.noise = GaussMarkovNoise(3, 2)
    return net


def test_a_thermostatted_rollout_is_projected_last_and_settles_near_the_training_temperature(geometry):
    """Jittering forecasts from an untrained noise head, projected once, after the thermostat, onto drawn bond
    lengths that take back most of every step: the frames keep the bonded geometry (1-3 pairs on average within
    a few times the range tolerance, at worst some 1e-2 A off on this harsh jitter) and the mean step energy settles
    within 10% of a target the projection alone keeps it below."""

    net = still_net_with_noise()
    net.bonded = geometry
    history = torch.as_tensor(vibrating(30, seed=1)[::10], dtype=torch.float32)[None].repeat(4, 1, 1, 1)
    mass, mask = MASS.expand(4, 9), torch.ones(4, 9, dtype=torch.bool)
    free = rollout(net, history, Z.expand(4, 9), mask, 600)
    target = 1.2 * step_energy(free[:, 300:], mass).mean()
    net.noise.step_energy.fill_(target)
    frames = rollout(net, history, Z.expand(4, 9), mask, 600, thermostat_coupling=4.0)
    assert geometry.violation(frames).mean() < 5 * RANGE_TOLERANCE and geometry.violation(frames).max() < 0.1
    settled = step_energy(frames[:, 300:], mass).mean()
    assert abs(settled / target - 1) < 0.1, (settled, target)


def seeded_rollouts(geometry):
    """frames(compiled): 6 frames of 2 rollouts of the still net with its noise head on geometry, drawn from seed 5,
    from a vibrating history; and the rollout's net, history, z and mask."""
    net = still_net_with_noise()
    net.bonded = geometry
    history = torch.as_tensor(vibrating(30, seed=1)[::10], dtype=torch.float32)[None].repeat(2, 1, 1, 1)
    z, mask = Z.expand(2, 9), torch.ones(2, 9, dtype=torch.bool)

    def frames(compiled):
        return rollout(net, history, z, mask, 6, generator=torch.Generator().manual_seed(5), compiled=compiled)

    return frames, (net, history, z, mask)


def test_a_compiled_rollout_gives_the_eager_frames_and_refuses_another_molecule(geometry):
    """`rollout(..., compiled=True)` (asteroid rollout --compile): the same draws from the same generator, the same
    frames up to float rounding, and the same frames twice; and another molecule than the bond table's is still
    refused (a compiled step checks nothing: `rollout` checks before its first forecast)."""
    frames, (net, history, z, mask) = seeded_rollouts(geometry)
    eager = frames(False)
    compiled = frames(True)
    # float rounding, through the fixed Newton rounds: far below the bond tolerance (1e-4 A)
    torch.testing.assert_close(compiled, eager, atol=5e-5, rtol=0)
    torch.testing.assert_close(frames(True), compiled, atol=0, rtol=0)
    other = z.clone()
    other[:, 0] = 7
    with pytest.raises(ConfigError, match="the constraints were fitted on"):
        rollout(net, history, other, mask, 4)


def test_a_compiled_batched_rollout_solves_the_bonds_in_its_step_and_ends_where_the_eager_one_does(
    geometry, monkeypatch
):
    """Batched (frames x K^3 over SETTLE_MAX_WORK) a compiled step solves the bonds of every frame in fixed rounds
    (`_bond_rounds`), where an eager one leaves them to `solve`'s Newton iterations: the same draws, and frames
    where the eager rollout puts them, to a few times the bond tolerance."""
    monkeypatch.setattr(bonded_module, "SETTLE_MAX_WORK", 0)
    rounds = []
    bond_rounds = geometry._bond_rounds
    monkeypatch.setattr(geometry, "_bond_rounds", lambda *args: rounds.append(1) or bond_rounds(*args))
    frames, _ = seeded_rollouts(geometry)
    eager = frames(False)
    assert not rounds  # eager, no fixed rounds
    compiled = frames(True)
    assert rounds  # traced into the compiled step
    torch.testing.assert_close(compiled, eager, atol=5 * geometry.tolerance, rtol=0)
    E = geometry.n_bonds  # the 1-3 pairs within their ranges, but on this harsh jitter a few held off by the bonds
    one_three = geometry.distances(compiled)[..., E:]
    outside = torch.maximum(geometry.lower[E:] - one_three, one_three - geometry.upper[E:]).clamp_min(0)
    assert outside.mean() < RANGE_TOLERANCE and outside.max() < 0.02, outside.max()


def test_a_forecast_the_fixed_rounds_settled_and_one_the_alternation_finishes_carry_on_alike(geometry, monkeypatch):
    """`rollout` reads back one flag per forecast (`Step.ready`): where the fixed rounds settled every frame it keeps
    their frames and the history and thermostat set points the step carried on from them; otherwise it checks the
    forecast, finishes its frames by the alternation and carries on itself (`advance`). Where every frame is settled,
    both ways give the same frames and set points, the 1-3 pairs within their ranges; and the set points have moved."""
    net = still_net_with_noise()
    net.bonded = geometry
    net.noise.step_energy.fill_(1e-3)
    history = torch.as_tensor(vibrating(30, seed=1)[::10], dtype=torch.float32)[None].repeat(2, 1, 1, 1)
    z, mask = Z.expand(2, 9), torch.ones(2, 9, dtype=torch.bool)

    def run():
        state = {}
        generator = torch.Generator().manual_seed(2)
        frames = rollout(
            net, history, z, mask, 10, thermostat_coupling=4.0, generator=generator, thermostat_state=state
        )
        return frames, state["set_point"]

    read_back, set_point = run()
    step = rollout_module.forecast_step
    monkeypatch.setattr(rollout_module, "forecast_step", lambda *a: step(*a)._replace(ready=torch.tensor(False)))
    finished, finished_set_point = run()
    torch.testing.assert_close(finished, read_back, atol=0, rtol=0)
    torch.testing.assert_close(finished_set_point, set_point, atol=0, rtol=0)
    assert (set_point != 1).all()
    E = geometry.n_bonds  # the bonds sit at drawn lengths; the 1-3 pairs within their ranges, but on this harsh
    one_three = geometry.distances(read_back)[..., E:]  # jitter a few are held off by the bonds (as above)
    outside = torch.maximum(geometry.lower[E:] - one_three, one_three - geometry.upper[E:]).clamp_min(0)
    assert outside.mean() < RANGE_TOLERANCE and outside.max() < 0.02


def test_plausible_ranges_move_only_what_leaves_them():
    """A model for many molecules has no bond table: its rollout keeps each bond within PLAUSIBLE_BOND_STRETCH of its
    mean over the starting history (a hydroxyl hydrogen driven into its oxygen went to 0.55-0.67 A, issue 26)."""
    history = torch.as_tensor(vibrating(8, amplitude=0.01), dtype=torch.float32)  # (8, 9, 3)
    guard = plausible_geometry(Z, history[None])
    assert guard.n_bonds == 8 and len(guard.pairs) > 8
    within = history[-1:] + 0.01 * torch.randn(1, 9, 3)  # one forecast frame of the one window
    torch.testing.assert_close(guard(within[None]), within[None])  # a vibration is no business of it
    crushed = within.clone()
    crushed[0, 8] = crushed[0, 2] + 0.6 * (crushed[0, 8] - crushed[0, 2])  # O1-H6 at 60% of its length
    fixed = guard(crushed[None])[0]
    oh = (fixed[0, 8] - fixed[0, 2]).norm()
    mean = (history[:, 8] - history[:, 2]).norm(dim=-1).mean()
    assert oh >= mean * (1 - PLAUSIBLE_BOND_STRETCH) - 1e-3 and guard.violation(fixed[None]).max() < 2 * RANGE_TOLERANCE
    mass = torch.as_tensor(atomic_masses[ETHANOL_Z], dtype=torch.float32)
    torch.testing.assert_close(  # internal forces only: the centre of mass stays
        (mass[:, None] * fixed[0]).sum(0), (mass[:, None] * crushed[0]).sum(0), atol=1e-4, rtol=0
    )


def test_a_model_for_many_molecules_takes_ranges_and_temperature_from_the_starting_history():
    """molecule_from_history: the thermostat's target is the history's own step energy (not the pretraining
    molecules' mean, which was 8% above ethanol's), and what leaves the history's plausible ranges is brought back;
    both are taken once, so a rollout advanced a forecast at a time (ForecastDynamics) keeps them."""

    net = still_net_with_noise()
    history = torch.as_tensor(vibrating(30, seed=1)[::10], dtype=torch.float32)[None].repeat(4, 1, 1, 1)
    mass, mask = MASS.expand(4, 9), torch.ones(4, 9, dtype=torch.bool)
    own = step_energy(history, mass).mean()
    net.noise.step_energy.fill_(3 * own)  # what the model was trained at: far from this molecule's

    def settled(**options):
        frames = rollout(net, history, Z.expand(4, 9), mask, 400, thermostat_coupling=4.0, **options)
        return frames, step_energy(frames[:, 200:], mass).mean()

    state = {}
    frames, from_history = settled(molecule_from_history=True, thermostat_state=state)
    _, from_training = settled()
    assert state["target"] == pytest.approx(float(own)) and from_history < 0.6 * from_training
    guard = state["guard"]
    # within the history's ranges: on average to the projection's tolerance, at worst some 1e-2 A on this jitter
    assert guard.violation(frames).mean() < 5 * RANGE_TOLERANCE and guard.violation(frames).max() < 0.1
    rollout(net, frames[:, -3:], Z.expand(4, 9), mask, 4, molecule_from_history=True, thermostat_state=state)
    assert state["guard"] is guard and state["target"] == pytest.approx(float(own))  # kept, not re-taken
