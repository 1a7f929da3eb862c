"""Long forecasts: each forecast of a model becomes part of its next history, as many times as needed."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from ase.data import atomic_masses
from torch import Tensor

from asteroid.errors import ConfigError, DivergedError
from asteroid.models.base import ForecastModel
from asteroid.models.bonded import BondProjection, plausible_geometry
from asteroid.models.noise import step_energy, thermostat

# Forecasts over which a sampled rollout relaxes to the training temperature (32 frames, 160 fs at the shipped
# spacing): without it, ethanol's sampled rollouts ran 13% cold (with 0.01 A history noise in training) or 36% hot
# (without), over 8 x 2000 frames (docs/results/rollout.md).
THERMOSTAT_COUPLING = 4.0
# Bounds of the thermostat's integral term (`rollout`): how far it may move the set point to make up for what the
# projection takes back.
SET_POINT_RANGE = (0.5, 2.0)
# Relative damping of the inertia tensor in `remove_rigid_motion`.
RIGID_DAMPING = 1e-6
# The parts of one rollout forecast that `rollout(..., timings=)` times: the network with its draws and bond lengths,
# the removal of rigid motion, the thermostat, the projection onto the bonded geometry (its fixed rounds, and the
# alternation for the frames they leave off); compiled, all but the alternation are one call, timed as "compiled".
PARTS = ("network", "rigid_motion", "thermostat", "projection", "compiled")


@contextmanager
def timed(timings: dict | None, part: str):
    """Add the time the block takes to timings[part] (seconds of the process's CPU), when timings is a dict."""
    if timings is None:
        yield
        return
    start = time.process_time()
    yield
    timings[part] = timings.get(part, 0.0) + time.process_time() - start


def default_thermostat(net: ForecastModel) -> float | None:
    """The coupling (forecasts) of the thermostat a sampled rollout of `net` runs by default: THERMOSTAT_COUPLING for
    a model that stores its training temperature (trained with model.stochastic), else None (off)."""
    return THERMOSTAT_COUPLING if net.noise is not None and net.noise.step_energy > 0 else None


def thermostat_coupling(net: ForecastModel, sample: bool, requested: float | None = None) -> float | None:
    """The coupling (forecasts) of the thermostat a rollout runs, None for none: `requested` (0: off), or by default
    `default_thermostat` for a sampled rollout and none for the forecast mean."""
    if requested is None:
        return default_thermostat(net) if sample else None
    return requested or None


def remove_rigid_motion(previous: Tensor, frames: Tensor, mass: Tensor) -> Tensor:
    """frames (B, P, N, 3) following previous (B, N, 3), each frame-to-frame step stripped of its centre-of-mass
    translation and of its rigid rotation about the centre of mass (the angular momentum of the step), as our MD
    generator strips its initial velocities; mass (B, N), 0 for padding (whose frames are returned as they were).
    All P steps at once: each step's rotation is taken about the frame it starts from as forecast, not as already
    stripped, which differs at second order in the (small) rotation per step."""
    real = (mass > 0)[:, None, :, None]  # (B, 1, N, 1)
    weights = (mass / mass.sum(-1, keepdim=True))[:, None, :, None]  # (B, 1, N, 1)
    original = frames
    frames = frames.masked_fill(~real, 0.0)  # padding may hold anything, NaN included
    before = torch.cat([previous.masked_fill(~real[:, 0], 0.0)[:, None], frames[:, :-1]], dim=1)  # (B, P, N, 3)
    steps = frames - before
    steps = steps - (weights * steps).sum(-2, keepdim=True)  # (B, P, N, 3)
    arm = before - (weights * before).sum(-2, keepdim=True)  # (B, P, N, 3) from each frame's centre of mass
    momentum = (weights * torch.linalg.cross(arm, steps)).sum(-2)  # (B, P, 3)
    eye = torch.eye(3, device=arm.device, dtype=arm.dtype)
    inertia = weights[..., None] * ((arm * arm).sum(-1)[..., None, None] * eye - arm[..., :, None] * arm[..., None, :])
    inertia = inertia.sum(-3)  # (B, P, 3, 3)
    # Damped, because a linear molecule's inertia is singular along its axis (where its momentum is zero, so the
    # damping changes nothing else); a solve, because a pseudo-inverse's SVD cost 35x as much (7 ms a batched forecast).
    damping = RIGID_DAMPING * inertia.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None] * eye
    spin = torch.linalg.solve_ex(inertia + damping, momentum)[0]  # (B, P, 3); NaN frames: NaN, refused after
    steps = steps - torch.linalg.cross(spin[:, :, None].expand_as(arm), arm)
    return torch.where(real, before[:, :1] + steps.cumsum(dim=1), original)


class Step(NamedTuple):
    """What one forecast of `rollout` gives (`forecast_step`): frames (B, P, N, 3) as proposed (network, rigid
    motion, thermostat), their bond lengths (B, P, E) or None, `BondProjection.settle` of them (or None without a
    projection), and the rollout carried on from the settled frames: `ready` (a 0-d bool tensor) says those are
    final (finite, and every frame settled within tolerance), `history` the next history and `set_point` the
    thermostat's next set points (B,)."""

    proposed: Tensor
    lengths: Tensor | None
    settled: tuple[Tensor, Tensor] | None
    ready: Tensor
    history: Tensor
    set_point: Tensor


def forecast_step(
    net: ForecastModel,
    history: Tensor,
    z: Tensor,
    mask: Tensor,
    box: Tensor | None,
    sample: bool,
    generator: torch.Generator | None,
    geometry: BondProjection | None,
    mass: Tensor,
    strip: bool,
    target: Tensor | None,
    set_point: Tensor,
    coupling: float | None,
    timings: dict | None = None,
) -> Step:
    """One forecast of `rollout` after history (B, H, N, 3): proposed (`ForecastModel.propose`), stripped of rigid
    motion (strip), rescaled toward the step energy target * set_point (coupling in forecasts, None: off), settled by
    `geometry.settle` (the net's bond table, or a transferable model's `plausible_geometry`; None: no projection),
    and the rollout carried on from the settled frames (`advance`). Tensors in, tensors out, no value read back:
    `rollout(..., compiled=True)` runs it as one compiled call (COMPILED_STEP), and reads back `ready` alone."""
    previous = history[:, -1]  # (B, N, 3)
    with timed(timings, "network"):
        pred, lengths = net.propose(history, z, mask, box, sample, generator, geometry)  # (B, P, N, 3), (B, P, E)
    with timed(timings, "rigid_motion"):
        if strip:
            pred = remove_rigid_motion(previous, pred, mass)
    with timed(timings, "thermostat"):
        if coupling is not None:
            pred = thermostat(previous, pred, mass, target * set_point, coupling)
    with timed(timings, "projection"):
        settled = None if geometry is None else geometry.settle(pred, lengths)
        final = pred if settled is None else settled[0]
        ready = finite(final, mask)
        if settled is not None:
            ready = ready & ~settled[1].any()
    return Step(pred, lengths, settled, ready, *advance(net, history, final, mass, target, set_point, coupling))


def advance(
    net: ForecastModel,
    history: Tensor,
    pred: Tensor,
    mass: Tensor,
    target: Tensor | None,
    set_point: Tensor,
    coupling: float | None,
) -> tuple[Tensor, Tensor]:
    """The history (B, H, N, 3) that follows history with the final forecast pred (B, P, N, 3), and the thermostat's
    set points (B,) moved by the integral term (`rollout`; unchanged with coupling None)."""
    if coupling is not None:
        measured = step_energy(pred, mass, history[:, -1]).clamp_min(1e-12)  # (B,)
        set_point = (set_point * (target / measured) ** (1 / coupling)).clamp(*SET_POINT_RANGE)
    # a fresh copy with standard strides (with B = 1 too, whose `contiguous` keeps the concatenation's batch
    # stride): a compiled step then sees the same strides every forecast, so it is compiled once
    history = torch.cat([history, pred], dim=1)[:, -net.history :].clone(memory_format=torch.contiguous_format)
    return history, set_point


# `forecast_step` compiled for fixed shapes (inductor, with its C++ wrapper: at batch 1 the Python wrapper's
# per-kernel calls cost as much as the kernels), compiled anew for each net and batch shape on its first call (about
# a minute): the same frames up to float rounding (docs/results/benchmark.md). fallback_random: torch's own random
# numbers, not inductor's, so that a seeded compiled rollout draws what the eager one draws.
COMPILED_STEP = torch.compile(forecast_step, dynamic=False, options={"cpp_wrapper": True, "fallback_random": True})


def finite(pred: Tensor, mask: Tensor) -> Tensor:
    """0-d bool tensor: whether the real atoms (mask (B, N)) of pred (B, P, N, 3) are all finite."""
    return (torch.isfinite(pred) | ~mask[:, None, :, None]).all()


def check_finite(pred: Tensor, mask: Tensor, start: int) -> None:
    """Refuse a forecast (B, P, N, 3) whose real atoms (mask (B, N)) hold NaN or infinity, naming its frames."""
    if not finite(pred, mask):
        raise DivergedError(
            f"the forecast of frames {start + 1}-{start + pred.shape[1]} holds NaN or infinity; nothing was written"
        )


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
    timings: dict | None = None,
    thermostat_state: dict | None = None,
    molecule_from_history: bool = False,
    into: np.ndarray | None = None,
    compiled: bool = False,
) -> Tensor | np.ndarray:
    """`n_frames` frames after `history`, each forecast of P frames becoming part of the next history.

    history (B, H, N, 3) Angstrom, z (B, N), mask (B, N), box (B, 3, 3) periodic cell (kept throughout) or None
    -> (B, n_frames, N, 3) Angstrom: a new tensor, or `into` (a numpy array of that shape, e.g. a memory map of a
    file, so that a long rollout is not held in memory), each forecast written into it as it is made.

    Each forecast is proposed (`ForecastModel.propose`: the mean, or with sample=True a draw from the model's learned
    distribution), stripped of its net translation and rotation (unless keep_rigid_motion, or in a periodic cell),
    rescaled toward the training temperature (thermostat_coupling, in forecasts; stochastic models only; None: off)
    and then projected once onto its bond lengths and the angle ranges. The projection takes back part of the motion
    the thermostat set (the stretch beyond the drawn bond lengths), and a proportional (Berendsen) thermostat then
    settles below its set point: with a loss f per forecast and coupling c, at (1 - f) / (1 + f (c - 1)) of it
    (f = 2%, c = 4: 0.93, ethanol's and aspirin's 8% cold before issue 25). An integral term removes that offset:
    the set point of each trajectory is moved by (target / measured)^(1 / c) after every forecast, within
    SET_POINT_RANGE. `progress`, if given, is called with the number of frames each forecast adds; `timings`, if a
    dict, receives the CPU seconds each of PARTS took, summed over the forecasts (`asteroid benchmark`);
    `thermostat_state`, if a dict, carries the integral term's set points ("set_point", (B,)) and what
    molecule_from_history took from the first history ("guard", "target") from one call to the next, for a caller
    that advances a rollout a forecast at a time (`ForecastDynamics`). molecule_from_history: for
    a net fitted to no molecule in particular (a model for many molecules; one molecule per call), take from the
    starting history what it cannot know: the bonds and ranges of `plausible_geometry` (when it has no bond table;
    the bonds at the lengths its transferable head predicts, when it has one) and the
    thermostat's target, the history's own step energy (the pretraining molecules' mean was 8% above ethanol's and
    15% below aspirin's). compiled: run each forecast (`forecast_step`, with the projection's fixed rounds and
    `advance`) as one call compiled for the batch's shapes (about a minute on the first forecast; ethanol at batch 1
    then pays it back after about 10,000 forecasts, docs/results/benchmark.md); the same frames up to float rounding.
    """
    net.check_inputs(history, z, max_z=getattr(net, "max_z", None))  # a compiled network checks nothing
    if net.bonded is not None:
        net.bonded.check(z)
    mass = torch.as_tensor(atomic_masses, dtype=history.dtype, device=history.device)[z] * mask  # (B, N)
    strip = not keep_rigid_motion and box is None
    if thermostat_coupling is not None and (net.noise is None or not net.noise.step_energy > 0):
        raise ConfigError(
            "the thermostat needs the training temperature, which only models trained with model.stochastic store"
        )
    B, _, N, _ = history.shape
    P = net.horizon
    frames = history.new_empty(B, n_frames, N, 3) if into is None else into
    state = {} if thermostat_state is None else thermostat_state
    if molecule_from_history and "guard" not in state:  # from the first history only, never from the rollout's own
        state["guard"] = plausible_geometry(z[0], history) if net.bonded is None else None
        state["target"] = step_energy(history, mass).mean()
    target = state.get("target", net.noise.step_energy if net.noise is not None else None)
    set_point = state.get("set_point", history.new_ones(B))  # the thermostat's integral term, per trajectory
    # what the forecasts are projected onto: the net's bond table, else the guard taken from the history, if any
    geometry = net.bonded if net.bonded is not None and net.bonded.fitted else state.get("guard")
    for start in range(0, n_frames, P):
        step = (history, z, mask, box, sample, generator, geometry, mass, strip, target, set_point, thermostat_coupling)
        if compiled:
            with timed(timings, "compiled"):
                result = COMPILED_STEP(net, *step)
        else:
            result = forecast_step(net, *step, timings)
        if result.ready:  # the one value read back: finite, and settled within tolerance
            pred = result.proposed if geometry is None else result.settled[0]
            history, set_point = result.history, result.set_point
        else:
            # refused before the projection, which would fail on it less plainly; without a projection, a finite
            # forecast is ready, so geometry is not None past this check
            check_finite(result.proposed, mask, start)
            with timed(timings, "projection"):  # the alternation, for the frames the fixed rounds left off
                pred = geometry(result.proposed, result.lengths, result.settled)
            check_finite(pred, mask, start)
            history, set_point = advance(net, history, pred, mass, target, set_point, thermostat_coupling)
        state["set_point"] = set_point
        kept = pred[:, : n_frames - start]  # the last forecast may be cut short
        frames[:, start : start + P] = kept if into is None else kept.cpu().numpy()
        if progress is not None:
            progress(kept.shape[1])
    return frames
