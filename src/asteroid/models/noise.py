"""A learned distribution around a forecast, so that sampled rollouts keep the data's fluctuations.

A forecast trained on MSE is the conditional mean: it averages away the part of the motion the history does not
determine, and a rollout fed its own means damps out (hydrogen steps of 0.03 A/frame against the data's 0.12, issue
15). Sampling the rest back restores the amplitude: if the mean is the conditional mean, mean-square step of sample =
mean-square step of mean + variance of the residual, which is the data's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from ase.data import atomic_masses
from torch import Tensor, nn

from asteroid.models.frames import frame_velocities


def lower_triangular(log_std: Tensor, coupling: Tensor) -> Tensor:
    """The factor M (..., P, P) of a Gaussian over P steps, r = M eps with eps ~ N(0, I): log_std (..., P) the log of
    each step's own (innovation) scale on the diagonal, coupling (..., P(P-1)/2) how strongly each step follows the
    innovations of the steps before it (row-major below the diagonal, in units of those innovations' scales). All
    couplings 0: independent steps; any covariance over the P steps has such a factor (its Cholesky factor)."""
    P = log_std.shape[-1]
    std = torch.exp(log_std)
    rows, cols = torch.tril_indices(P, P, offset=-1, device=log_std.device)
    factor = torch.diag_embed(std)
    factor[..., rows, cols] = coupling * std[..., cols]
    return factor


def factor_nll(values: Tensor, factor: Tensor) -> Tensor:
    """(..., P, D) negative log-likelihood of each entry of values (..., P, D) (D independent columns) under
    N(0, M M^T) with M = factor (..., P, P) lower triangular, the constant 0.5 log(2 pi) left out."""
    factor, values = factor.float(), values.float()  # torch has no half-precision triangular solve on the CPU
    eps = torch.linalg.solve_triangular(factor, values, upper=False)
    return 0.5 * eps.square() + torch.log(torch.diagonal(factor, dim1=-2, dim2=-1))[..., None]


class GaussMarkovNoise(nn.Module):
    """The forecast residual as a correlated random walk over the horizon: x_p = mean_p + sum_{q <= p} d_q, with the
    increments d (per atom, P steps) Gaussian, d = M eps, eps ~ N(0, I), the same for each Cartesian component.

    The residual starts from zero at the (known) last history frame. M is lower triangular (`lower_triangular`): an
    MLP predicts, from invariants of the history (atom type, speeds and distance travelled over the history, in units
    of the first horizon step's RMS displacement), each increment's own scale and how it follows the earlier ones.
    Independent increments (the model before, a plain random walk) are white: every frequency up to the frame rate
    gets the same power, which put a flat floor between 1900 and 2800 cm^-1 into aspirin's spectrum where the data have
    none (issue 15); correlated increments can carry the motion's own time structure. Isotropic in space and built
    from invariants, the distribution is E(3)-equivariant with the mean. Trained by the exact likelihood of the
    residual (`nll`, the mean detached: the forecast's own loss is unchanged).
    """

    def __init__(self, history: int, horizon: int, hidden: int = 32, max_z: int = 100):
        super().__init__()
        self.horizon = horizon
        self.embed = nn.Embedding(max_z + 1, hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden + history + 1, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, horizon * (horizon + 1) // 2),
        )
        # Mass-weighted mean square step between consecutive frames of the training data, amu A^2 per atom: the
        # training temperature in the rollout's own units, which `thermostat` steers sampled rollouts toward.
        self.register_buffer("step_energy", torch.zeros(()))

    def factor(self, history: Tensor, z: Tensor, scale: Tensor) -> Tensor:
        """history (B, H, N, 3), z (B, N), scale (P,) training RMS displacement per horizon step
        -> (B, N, P, P) the increments' factor M, Angstrom."""
        unit = scale[0]
        speed = frame_velocities(history).norm(dim=-1) / unit  # (B, H, N)
        travel = (history[:, -1] - history[:, 0]).norm(dim=-1, keepdim=True) / unit  # (B, N, 1)
        features = torch.cat([self.embed(z), speed.transpose(1, 2), travel], dim=-1)  # (B, N, C + H + 1)
        # centred on the RMS increment of the horizon, so that an untrained head starts at the data's scale
        prior = torch.log(scale.diff(prepend=scale.new_zeros(1)).abs().clamp_min(1e-3 * unit))  # (P,)
        log_std, coupling = self.mlp(features).split(
            [self.horizon, self.horizon * (self.horizon - 1) // 2], dim=-1
        )  # (B, N, P), (B, N, P(P-1)/2)
        return lower_triangular(log_std + prior, coupling)  # (B, N, P, P)

    def nll(self, history: Tensor, z: Tensor, mask: Tensor, mean: Tensor, target: Tensor, scale: Tensor) -> Tensor:
        """Mean negative log-likelihood per real atom and component of target (B, P, N, 3) given the forecast mean
        (B, P, N, 3), in units where the first horizon step's RMS displacement is 1 (so it is comparable across
        molecules and spacings)."""
        residual = (target - mean.detach()) / scale[0]  # (B, P, N, 3)
        increment = residual.diff(dim=1, prepend=torch.zeros_like(residual[:, :1])).transpose(1, 2)  # (B, N, P, 3)
        per_entry = factor_nll(increment, self.factor(history, z, scale) / scale[0])  # (B, N, P, 3)
        weights = mask[:, :, None, None].expand_as(per_entry).to(per_entry.dtype)
        return (per_entry * weights).sum() / weights.sum() + 0.5 * math.log(2 * math.pi)

    def sample(
        self, history: Tensor, z: Tensor, mean: Tensor, scale: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """One draw (B, P, N, 3) around the forecast mean (B, P, N, 3)."""
        eps = torch.randn(mean.transpose(1, 2).shape, generator=generator, device=mean.device, dtype=mean.dtype)
        steps = self.factor(history, z, scale) @ eps  # (B, N, P, 3)
        return mean + steps.transpose(1, 2).cumsum(dim=1)


def step_energy(frames: Tensor, mass: Tensor, previous: Tensor | None = None) -> Tensor:
    """(B,) mass-weighted mean square step per atom between consecutive frames of frames (B, T, N, 3), mass (B, N)
    amu (0 for padding): twice the finite-difference kinetic energy per atom, in amu A^2 per frame spacing^2.
    previous (B, N, 3): the frame before frames, whose step to the first counts too."""
    steps = frames.diff(dim=1).square().sum(-1)  # (B, T - 1, N)
    if previous is not None:
        # the first step's squares joined to the others, not the frames to previous: compiled by torch 2.13's
        # inductor, frames concatenated there were stored in a buffer it then reused while they were still in use
        steps = torch.cat([(frames[:, 0] - previous).square().sum(-1)[:, None], steps], dim=1)  # (B, T, N)
    return (mass[:, None] * steps).sum(-1).mean(-1) / (mass > 0).sum(-1)


def thermostat(previous: Tensor, frames: Tensor, mass: Tensor, target: Tensor, coupling: float) -> Tensor:
    """Berendsen velocity rescaling of a forecast: the steps of frames (B, P, N, 3) after previous (B, N, 3) scaled
    by sqrt(1 + (target / E - 1) / coupling), E their `step_energy`, so a rollout relaxes to the training temperature
    within about `coupling` forecasts (1: at once). mass (B, N) amu."""
    energy = step_energy(frames, mass, previous).clamp_min(1e-12)  # (B,)
    factor = (1 + (target / energy - 1) / coupling).clamp_min(0).sqrt()  # (B,)
    return previous[:, None] + factor[:, None, None, None] * (frames - previous[:, None])


def windows_step_energy(dataset, max_windows: int = 1024, seed: int = 0) -> float:
    """`step_energy` averaged over the frames (history then targets) of up to max_windows windows of `dataset`
    (training windows: {"history" (H, N, 3), "target" (P, N, 3), "z" (N,)}, frames evenly spaced, as rollouts
    need), amu A^2."""
    picks = np.random.default_rng(seed).permutation(len(dataset))[:max_windows]
    total = 0.0
    for i in picks:
        window = dataset[i]
        mass = torch.as_tensor(atomic_masses[window["z"].numpy()], dtype=torch.float64)
        frames = torch.cat([window["history"], window["target"]])[None].double()  # (1, H + P, N, 3)
        total += float(step_energy(frames, mass[None]))
    return total / len(picks)
