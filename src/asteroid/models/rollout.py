"""Long forecasts: each forecast of a model becomes part of its next history, as many times as needed."""

from __future__ import annotations

import torch
from ase.data import atomic_masses
from torch import Tensor

from asteroid.errors import ConfigError, DivergedError
from asteroid.models.base import ForecastModel
from asteroid.models.noise import thermostat

# Forecasts over which a sampled rollout relaxes to the training temperature (32 frames, 160 fs at the shipped
# spacing): without it, ethanol's sampled rollouts ran 13% cold (with 0.01 A history noise in training) or 36% hot
# (without), over 8 x 2000 frames; with it, 7% cold (docs/results/rollout.md).
THERMOSTAT_COUPLING = 4.0


def remove_rigid_motion(previous: Tensor, frames: Tensor, mass: Tensor) -> Tensor:
    """frames (B, P, N, 3) following previous (B, N, 3), each frame-to-frame step stripped of its centre-of-mass
    translation and of its rigid rotation about the centre of mass (the angular momentum of the step), as our MD
    generator strips its initial velocities; mass (B, N), 0 for padding (whose frames are returned as they were)."""
    real = (mass > 0)[..., None]  # (B, N, 1)
    weights = (mass / mass.sum(-1, keepdim=True))[..., None]  # (B, N, 1)
    previous, original = previous.masked_fill(~real, 0.0), frames
    frames = frames.masked_fill(~real[:, None], 0.0)  # padding may hold anything, NaN included
    steps = frames.diff(dim=1, prepend=previous[:, None])  # (B, P, N, 3)
    out, position = [], previous
    for p in range(frames.shape[1]):
        step = steps[:, p] - (weights * steps[:, p]).sum(-2, keepdim=True)  # (B, N, 3)
        arm = position - (weights * position).sum(-2, keepdim=True)  # (B, N, 3) from the centre of mass
        momentum = (weights * torch.linalg.cross(arm, step)).sum(-2)  # (B, 3)
        inertia = (
            weights[..., None]
            * (
                (arm * arm).sum(-1)[..., None, None] * torch.eye(3, device=arm.device)
                - arm[..., :, None] * arm[..., None, :]
            )
        ).sum(-3)  # (B, 3, 3)
        spin = (torch.linalg.pinv(inertia) @ momentum[..., None])[..., 0]  # (B, 3); pinv: linear molecules
        position = position + step - torch.linalg.cross(spin[:, None].expand_as(arm), arm)
        out.append(position)
    return torch.where(real[:, None], torch.stack(out, dim=1), original)


@torch.inference_mode()
def rollout(
    net: ForecastModel,
    history: Tensor,
    z: Tensor,
    mask: Tensor,
    n_frames: int,
    progress=None,
    box: Tensor | None = None,
    sample: bool = True,
    keep_rigid_motion: bool = False,
    thermostat_coupling: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`n_frames` frames after `history`, each forecast of P frames becoming part of the next history.

    history (B, H, N, 3) Angstrom, z (B, N), mask (B, N), box (B, 3, 3) periodic cell (kept throughout) or None
    -> (B, n_frames, N, 3) Angstrom.
    sample: draw each forecast from the model's learned distribution (models trained with model.stochastic; the
    mean for others). keep_rigid_motion False: strip every forecast's net translation and rotation (open boundaries
    only: in a periodic cell they are kept). thermostat_coupling: rescale each forecast's steps toward the training
    temperature within about this many forecasts (`models.noise.thermostat`; stochastic models only), then project
    onto the bonded geometry again; None: off. `progress`, if given, is called with the number of frames each
    forecast adds (e.g. a tqdm bar's `update`).
    """
    mass = torch.as_tensor(atomic_masses, dtype=history.dtype, device=history.device)[z] * mask  # (B, N)
    strip = not keep_rigid_motion and box is None
    if thermostat_coupling is not None and (net.noise is None or not net.noise.step_energy > 0):
        raise ConfigError(
            "the thermostat needs the training temperature, which only models trained with model.stochastic store"
        )
    frames = []
    produced = 0
    while produced < n_frames:
        pred = net.generate(history, z, mask, box=box, sample=sample, generator=generator)  # (B, P, N, 3)
        if not torch.isfinite(pred[mask[:, None, :, None].expand_as(pred)]).all():
            raise DivergedError(
                f"the forecast of frames {produced + 1}-{produced + pred.shape[1]} holds NaN or "
                "infinity; nothing was written"
            )
        if strip:
            pred = remove_rigid_motion(history[:, -1], pred, mass)
        if thermostat_coupling is not None:
            rescaled = thermostat(history[:, -1], pred, mass, net.noise.step_energy, thermostat_coupling)
            # back onto the bond lengths the forecast has (rescaling the steps stretches them a little)
            bonded = net.bonded
            pred = rescaled if bonded is None else bonded(rescaled, bonded.distances(pred)[..., : bonded.n_bonds])
        frames.append(pred)
        history = torch.cat([history, pred], dim=1)[:, -net.history :]  # (B, H, N, 3)
        if progress is not None:
            progress(min(pred.shape[1], n_frames - produced))  # the last forecast may be cut short
        produced += pred.shape[1]
    return torch.cat(frames, dim=1)[:, :n_frames]
