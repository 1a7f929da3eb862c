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

from asteroid.api import checks
from asteroid.api.threads import choose_threads
from asteroid.checkpoints import (
    CONFIG_KEY,
    DATA_KEY,
    PRETRAINED,
    check_finite_weights,
    load_state,
    read_checkpoint,
    resolve_ckpt_path,
)
from asteroid.data.signature import DataSignature
from asteroid.data.windows import rollout_spacing
from asteroid.errors import ArgumentTypeError, ArgumentValueError, ConfigError, DataError
from asteroid.models.rollout import check_finite, rollout, thermostat_coupling
from asteroid.runs import ROOT, latest_checkpoint
from asteroid.training.module import ForecastModule


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
    """The model of a checkpoint file, of a run name (its newest version's last.ckpt), or "pretrained" (the shipped
    model for any H/C/N/O molecule), ready to forecast."""
    if not isinstance(checkpoint, (str, Path)):
        raise ArgumentTypeError(f"checkpoint must be a file path or run name (str or Path), got {checkpoint!r}")
    device = checks.device(device)
    choose_threads()
    path = Path(resolve_ckpt_path(str(checkpoint), "asteroid") if str(checkpoint) == PRETRAINED else checkpoint)
    if not path.is_file() and not path.suffix:
        path = latest_checkpoint(str(checkpoint)) or path
    if not path.is_file():
        raise ConfigError(f"{checkpoint}: no such checkpoint file, nor a run {ROOT / str(checkpoint)} with one")
    stored = read_checkpoint(path)
    trained = DataSignature.from_dict(stored.get(DATA_KEY))
    if CONFIG_KEY not in stored or trained is None or not trained.atoms:
        raise ConfigError(
            f"{path}: made before checkpoints stored their model and atoms; load it with "
            "asteroid.api.forecaster.load_with_data(path, ['--config', CONFIG])"
        )
    check_finite_weights(stored["state_dict"], path)
    config = dict(stored[CONFIG_KEY])
    net = _instantiate(config.pop("net"), history=len(trained.history_offsets), horizon=len(trained.target_offsets))
    module = ForecastModule(net=net, **config)
    load_state(module, stored["state_dict"], path)
    return Forecaster(module.net.to(device).eval(), trained, str(path))


def load_with_data(checkpoint: str | Path, config_args: list[str] = (), own_options: list[str] = ()):
    """A checkpoint's Forecaster (with its run's `name`) and the data module of its run, for the commands and for
    work on the test windows: built from the config stored in the checkpoint (`last`: the run's newest last.ckpt),
    or from `config_args` (`--config ...` and overrides; refused where the model was trained with other settings).
    The file is read once. Returns (Forecaster, TrajectoryDataModule); the data are set up by the caller."""
    from asteroid.lightning_cli import from_checkpoint_or_config, load_weights  # Lightning: only where needed

    cli, path = from_checkpoint_or_config(list(config_args), str(checkpoint), list(own_options))
    module, datamodule = load_weights(cli, path)
    # a checkpoint from before the record: the layout of its config, its atoms once the data are set up
    trained = DataSignature.from_dict(read_checkpoint(path).get(DATA_KEY)) or datamodule.signature()
    return Forecaster(module.net.eval(), trained, str(path), name=cli.config.name), datamodule


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

    def __init__(self, net, trained: DataSignature, checkpoint: str, name: str | None = None):
        self.net, self.trained, self.checkpoint, self.name = net, trained, checkpoint, name
        self.layout = trained.layout
        self.molecules = [np.asarray(z) for z in trained.atoms]
        self.history_frames, self.horizon = net.history, net.horizon
        self.dt_fs = trained.dt_fs[0] if trained.dt_fs else None  # of the training data's frames
        try:
            self.spacing = rollout_spacing(self.layout)
        except ConfigError:  # a peer protocol's layout: it forecasts, but its forecasts cannot become history
            self.spacing = None
        self.frame_fs = None if self.spacing is None or self.dt_fs is None else self.spacing * self.dt_fs
        self.stochastic = net.noise is not None

    def __repr__(self) -> str:
        return (
            f"Forecaster({type(self.net).__name__} from {self.checkpoint}: {self.history_frames} frames in, "
            f"{self.horizon} out, {self.frame_fs} fs apart, {'stochastic' if self.stochastic else 'mean'})"
        )

    def forecast(self, history, z=None, sample: bool = False, seed: int | None = None) -> Frames:
        """The next `horizon` frames after `history` ((T, N, 3) Angstrom or ase.Atoms frames): the forecast mean,
        or with sample=True a draw from the model's learned distribution."""
        sample = checks.flag("sample", sample)
        seed = None if seed is None else checks.integer("seed", seed)
        frames, z = self._history(history, z)
        generator = None if seed is None else torch.Generator(self._device).manual_seed(seed)
        with torch.inference_mode():
            pred = self.net.generate(frames, *self._atoms(z), sample=sample, generator=generator)
        check_finite(pred, torch.ones_like(pred[:, 0, :, 0], dtype=torch.bool), start=0)
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
        frames = checks.integer("frames", frames, minimum=1)
        sample = checks.flag("sample", sample, optional=True)
        keep_rigid_motion = checks.flag("keep_rigid_motion", keep_rigid_motion)
        thermostat = None if thermostat is None else checks.number("thermostat", thermostat, minimum=0.0)
        seed = checks.integer("seed", seed)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ArgumentTypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if thermostat_state is not None and not isinstance(thermostat_state, dict):
            raise ArgumentTypeError(f"thermostat_state must be a dict or None, got {type(thermostat_state).__name__}")
        if sample and not self.stochastic:
            raise ConfigError(f"sample=True: {self.checkpoint} was trained without model.stochastic; it has no draws")
        sample = self.stochastic if sample is None else sample
        history_frames, z = self._history(history, z)
        generator = generator or torch.Generator(self._device).manual_seed(seed)
        predicted = rollout(
            self.net,
            history_frames,
            *self._atoms(z),
            frames,
            sample=sample,
            keep_rigid_motion=keep_rigid_motion,
            thermostat_coupling=thermostat_coupling(self.net, sample, thermostat),
            generator=generator,
            thermostat_state=thermostat_state,
            molecule_from_history=self.trained.transferable,
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
        history, z = checks.frames_of("history", history, z)
        if len(history) < self.history_frames:
            raise DataError(
                f"history has {len(history)} frames; the model needs {self.history_frames}, {self.frame_fs} fs apart"
            )
        if z is None:
            if len(self.molecules) != 1:
                raise DataError("history: the model was trained on several molecules; give z (the atomic numbers)")
            z = self.molecules[0]
        z = np.asarray(z)
        problem = self.trained.unknown_atoms(z)
        if problem is not None:
            raise DataError(f"history: {problem}")
        if len(z) != history.shape[1]:
            raise DataError(f"history has {history.shape[1]} atoms, z {len(z)}")
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
        if not isinstance(forecaster, Forecaster):
            raise ArgumentTypeError(f"forecaster must be what asteroid.load returns, got {type(forecaster).__name__}")
        if forecaster.spacing is None:
            rollout_spacing(forecaster.layout)  # says why
        if not isinstance(history, (list, tuple)) or not all(isinstance(atoms, Atoms) for atoms in history):
            raise ArgumentTypeError("history must be a list of ase.Atoms frames, oldest first")
        positions, _ = checks.frames_of("history", history) if history else (np.empty((0, 0, 3)), None)
        if len(positions) < forecaster.history_frames:
            raise ArgumentValueError(
                f"history has {len(positions)} frame(s); the model needs {forecaster.history_frames}, "
                f"{forecaster.frame_fs:g} fs apart"
            )
        loginterval = checks.integer("loginterval", loginterval, minimum=1)
        sample = checks.flag("sample", sample, optional=True)
        seed = checks.integer("seed", seed)
        super().__init__(
            history[-1].copy(), forecaster.frame_fs * units.fs, trajectory=trajectory, loginterval=loginterval
        )
        self.forecaster, self.sample, self.rollout_options = forecaster, sample, rollout_options
        self.generator = torch.Generator(forecaster._device).manual_seed(seed)
        self.thermostat_state: dict = {}  # the thermostat's integral term, carried from forecast to forecast
        self.history = positions[-forecaster.history_frames :]  # (H, N, 3)
        if len(self.history) > 1:  # from the start, as after every step: the backward difference of the last two
            self.atoms.set_velocities((self.history[-1] - self.history[-2]) / self.dt)
        self._pending: list[np.ndarray] = []
        unknown = sorted(set(rollout_options) - {"keep_rigid_motion", "thermostat"})
        if unknown:
            raise ArgumentTypeError(
                f"ForecastDynamics: unknown option(s) {', '.join(unknown)}; it takes keep_rigid_motion and thermostat"
            )
        if rollout_options.get("thermostat") is not None:
            checks.number("thermostat", rollout_options["thermostat"], minimum=0.0)
        checks.flag("keep_rigid_motion", rollout_options.get("keep_rigid_motion", False))

    @property
    def time_fs(self) -> float:
        """Femtoseconds advanced so far (`get_time()` gives it in ASE's units, as every ASE dynamics does)."""
        return self.get_time() / units.fs

    def run(self, steps: int = 50) -> bool:
        """Advance `steps` frames (each `forecaster.frame_fs`), calling the attached observers."""
        return super().run(checks.integer("steps", steps, minimum=0))

    def attach(self, function, interval: int = 1, *args, **kwargs):
        """Call `function(*args, **kwargs)` every `interval` steps (as ASE's dynamics do)."""
        if not callable(function) and not hasattr(function, "write"):
            raise ArgumentTypeError(f"function must be callable (or a trajectory to write to), got {function!r}")
        return super().attach(function, checks.integer("interval", interval, minimum=1), *args, **kwargs)

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
