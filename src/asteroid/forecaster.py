"""A trained model from Python: `asteroid.load(checkpoint)` rebuilds it from the checkpoint alone.

    import asteroid
    model = asteroid.load("runs/ethanol/version_0/checkpoints/last.ckpt")   # or asteroid.load("ethanol")
    future = model.rollout(frames, 1000)        # frames: (T, N, 3) Angstrom or a list of ase.Atoms
    future.positions, future.times_fs           # (1000, N, 3), (1000,)

`ForecastDynamics` drives an `ase.Atoms` the way ASE's MD classes do (attach observers, a trajectory file).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.md.md import MolecularDynamics

from asteroid.checkpoints import CONFIG_KEY, DATA_KEY, check_finite_weights, load_state, read_checkpoint
from asteroid.data.windows import WindowLayout, rollout_spacing
from asteroid.errors import ConfigError, DataError
from asteroid.models.rollout import THERMOSTAT_COUPLING, rollout
from asteroid.module import ForecastModule
from asteroid.runs import ROOT, latest_checkpoint


@dataclass
class Frames:
    """Predicted frames: positions (F, N, 3) Angstrom, times_fs (F,) after the last history frame, z (N,)."""

    positions: np.ndarray
    times_fs: np.ndarray
    z: np.ndarray

    def to_atoms(self) -> list[Atoms]:
        return [
            Atoms(numbers=self.z, positions=frame, info={"time_fs": float(t)})
            for frame, t in zip(self.positions, self.times_fs)
        ]


def load(checkpoint: str | Path, device: str = "cpu") -> Forecaster:
    """The model of a checkpoint file, or of a run name (its newest version's last.ckpt), ready to forecast."""
    path = Path(checkpoint)
    if not path.is_file() and not path.suffix:
        path = latest_checkpoint(str(checkpoint)) or path
    if not path.is_file():
        raise ConfigError(f"{checkpoint}: no such checkpoint file, nor a run {ROOT / str(checkpoint)} with one")
    stored = read_checkpoint(path)
    if CONFIG_KEY not in stored or not (stored.get(DATA_KEY) or {}).get("atoms"):
        raise ConfigError(
            f"{path}: made before checkpoints stored their model and atoms; load it with "
            "asteroid.lightning_cli.load_trained(path, ['--config', CONFIG])"
        )
    check_finite_weights(stored["state_dict"], path)
    config, data = dict(stored[CONFIG_KEY]), stored[DATA_KEY]
    layout = WindowLayout(tuple(data["history_offsets"]), tuple(data["target_offsets"]))
    net = _instantiate(config.pop("net"), history=len(layout.history_offsets), horizon=len(layout.target_offsets))
    module = ForecastModule(net=net, **config)
    load_state(module, stored["state_dict"], path)
    return Forecaster(module.net.to(device).eval(), layout, data, str(path))


def _instantiate(spec: dict, **linked):
    """A class from its {class_path, init_args} (as jsonargparse writes it), nested specs included."""
    module_name, _, class_name = spec["class_path"].rpartition(".")
    args = {
        key: _instantiate(value) if isinstance(value, dict) and "class_path" in value else value
        for key, value in (spec.get("init_args") or {}).items()
        if value is not None
    }
    return getattr(importlib.import_module(module_name), class_name)(**args, **linked)


class Forecaster:
    """A trained net and what it was trained on: `forecast` gives its next frames, `rollout` as many as asked.

    History frames are `frame_fs` apart (the model's spacing times the data's time step), oldest first; the last
    `history_frames` of them are used.
    """

    def __init__(self, net, layout: WindowLayout, trained: dict, checkpoint: str):
        self.net, self.layout, self.checkpoint = net, layout, checkpoint
        self.molecules = [np.asarray(z) for z in trained["atoms"]]
        self.history_frames, self.horizon = net.history, net.horizon
        self.dt_fs = float(trained["dt_fs"][0])  # of the training data's frames
        try:
            self.spacing = rollout_spacing(layout)
        except ConfigError:  # a peer protocol's layout: it forecasts, but its forecasts cannot become history
            self.spacing = None
        self.frame_fs = None if self.spacing is None else self.spacing * self.dt_fs
        self.stochastic = net.noise is not None

    def __repr__(self) -> str:
        return (
            f"Forecaster({type(self.net).__name__} from {self.checkpoint}: {self.history_frames} frames in, "
            f"{self.horizon} out, {self.frame_fs} fs apart, {'stochastic' if self.stochastic else 'mean'})"
        )

    def forecast(self, history, z=None, sample: bool = False, seed: int | None = None) -> Frames:
        """The next `horizon` frames after `history` ((T, N, 3) Angstrom or ase.Atoms frames): the forecast mean,
        or with sample=True a draw from the model's learned distribution."""
        frames, z = self._history(history, z)
        generator = None if seed is None else torch.Generator(self._device).manual_seed(seed)
        with torch.inference_mode():
            pred = self.net.generate(frames, *self._atoms(z), sample=sample, generator=generator)
        offsets = np.asarray(self.layout.target_offsets) - self.layout.history_offsets[-1]
        return Frames(pred[0].cpu().numpy(), offsets * self.dt_fs, z)

    def rollout(
        self,
        history,
        frames: int,
        z=None,
        sample: bool | None = None,
        keep_rigid_motion: bool = False,
        thermostat: float | None = None,
        seed: int = 0,
        generator: torch.Generator | None = None,
        thermostat_state: dict | None = None,
    ) -> Frames:
        """`frames` frames after `history`, each forecast fed back as history, as `asteroid rollout` does.

        sample: draw from the learned distribution (default: if the model has one); thermostat: Berendsen coupling
        toward the training temperature in forecasts (default 4 when sampling; 0 off), with an integral term whose
        state `thermostat_state` (a dict) carries from call to call; rigid motion is stripped unless
        keep_rigid_motion.
        """
        if self.spacing is None:
            rollout_spacing(self.layout)  # says why
        if frames < 1:
            raise ConfigError(f"frames must be >= 1, got {frames}")
        sample = self.stochastic if sample is None else sample
        coupling = (THERMOSTAT_COUPLING if sample and self.stochastic else 0.0) if thermostat is None else thermostat
        history_frames, z = self._history(history, z)
        generator = generator or torch.Generator(self._device).manual_seed(seed)
        predicted = rollout(
            self.net,
            history_frames,
            *self._atoms(z),
            frames,
            sample=sample,
            keep_rigid_motion=keep_rigid_motion,
            thermostat_coupling=coupling or None,
            generator=generator,
            thermostat_state=thermostat_state,
        )
        return Frames(predicted[0].cpu().numpy(), self.frame_fs * np.arange(1, frames + 1), z)

    @property
    def _device(self) -> torch.device:
        return next(self.net.buffers()).device

    def _atoms(self, z: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.as_tensor(z, device=self._device)[None]  # (1, N)
        return z, torch.ones_like(z, dtype=torch.bool)

    def _history(self, history, z) -> tuple[torch.Tensor, np.ndarray]:
        """(1, H, N, 3) float32 tensor of the last H frames, and the atomic numbers (given, from the Atoms, or the
        model's one molecule)."""
        if len(history) and isinstance(history[0], Atoms):
            z = history[0].numbers if z is None else z
            history = np.stack([atoms.positions for atoms in history])
        history = np.asarray(history, dtype=np.float64)
        if history.ndim != 3 or history.shape[-1] != 3:
            raise DataError(f"history must be frames (T, N, 3) Angstrom, got shape {history.shape}")
        if len(history) < self.history_frames:
            raise DataError(
                f"history has {len(history)} frames; the model needs {self.history_frames}, {self.frame_fs} fs apart"
            )
        if z is None:
            if len(self.molecules) != 1:
                raise DataError("the model was trained on several molecules: give z (the atomic numbers)")
            z = self.molecules[0]
        z = np.asarray(z)
        if not any(np.array_equal(z, known) for known in self.molecules):
            raise DataError(f"atoms {z.tolist()} are none of the molecules the model was trained on")
        if len(z) != history.shape[1]:
            raise DataError(f"history has {history.shape[1]} atoms, z {len(z)}")
        if not np.isfinite(history).all():
            raise DataError("history holds NaN or infinity")
        frames = torch.as_tensor(history[-self.history_frames :], dtype=torch.float32, device=self._device)
        return frames[None], z


class ForecastDynamics(MolecularDynamics):
    """Advances an ase.Atoms by forecasts, one frame (`forecaster.frame_fs`) per step, as ASE's MD classes do:
    `attach` observers, pass `trajectory="run.traj"`, call `run(steps)`. No forces: velocities are the backward
    difference of the last two frames, so `atoms.get_temperature()` works in observers.

    history: the last frames (ase.Atoms, oldest first, `frame_fs` apart); the driven Atoms is a copy of the last.
    """

    def __init__(
        self,
        forecaster: Forecaster,
        history: list[Atoms],
        trajectory=None,
        loginterval: int = 1,
        sample: bool | None = None,
        seed: int = 0,
        **rollout_options,
    ):
        if forecaster.spacing is None:
            rollout_spacing(forecaster.layout)  # says why
        super().__init__(
            history[-1].copy(), forecaster.frame_fs * units.fs, trajectory=trajectory, loginterval=loginterval
        )
        self.forecaster, self.sample, self.rollout_options = forecaster, sample, rollout_options
        self.generator = torch.Generator(forecaster._device).manual_seed(seed)
        self.thermostat_state: dict = {}  # the thermostat's integral term, carried from forecast to forecast
        self.history = np.stack([atoms.positions for atoms in history])[-forecaster.history_frames :]  # (H, N, 3)
        self._pending: list[np.ndarray] = []

    def step(self):
        if not self._pending:
            forecast = self.forecaster.rollout(
                self.history,
                self.forecaster.horizon,
                z=self.atoms.numbers,
                sample=self.sample,
                generator=self.generator,
                thermostat_state=self.thermostat_state,
                **self.rollout_options,
            )
            self._pending = list(forecast.positions)
        frame = self._pending.pop(0)
        self.atoms.set_velocities((frame - self.history[-1]) / self.dt)
        self.atoms.positions = frame
        self.history = np.concatenate([self.history[1:], frame[None]])

    def _refresh_properties(self):
        pass  # a forecast has no forces or energies to refresh
