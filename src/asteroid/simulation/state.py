"""The state of a GFN2-xTB MD run: its settings, the frames recorded so far, and the checkpoint that lets an
interrupted run go on to the very frames an uninterrupted one would have made."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from ase import Atoms

from asteroid.errors import ConfigError, DataError
from asteroid.fileio import atomic_output
from asteroid.simulation.xtb import EV_PER_KCAL_MOL


def checkpoint_path(out: str | Path) -> Path:
    """Where a run writing `out` keeps its checkpoint until the output is complete."""
    out = Path(out)
    return out.with_name(out.name + ".partial.npz")


@dataclasses.dataclass(frozen=True)
class MDSettings:
    """Everything that decides the trajectory; a checkpoint only resumes a run with the same settings."""

    name: str
    structure: str  # digest of the starting atoms and coordinates
    temperature_K: float
    timestep_fs: float
    every: int
    thermalize_steps: int
    friction: float  # 1/fs
    seed: int
    keep_rotation: bool


class Frames:
    """Recorded frames in MD17 units: R (Angstrom), E and E_kin (kcal/mol), F (kcal/mol/Angstrom)."""

    KEYS = ("R", "E", "F", "E_kin")

    def __init__(self, arrays: dict | None = None):
        self.lists = {key: list(arrays[key]) if arrays else [] for key in self.KEYS}

    def __len__(self) -> int:
        return len(self.lists["R"])

    def record(self, atoms: Atoms) -> None:
        self.lists["R"].append(atoms.get_positions())
        self.lists["E"].append(atoms.get_potential_energy() / EV_PER_KCAL_MOL)
        self.lists["F"].append(atoms.get_forces() / EV_PER_KCAL_MOL)
        self.lists["E_kin"].append(atoms.get_kinetic_energy() / EV_PER_KCAL_MOL)

    def arrays(self, n_atoms: int) -> dict[str, np.ndarray]:
        shapes = {"R": (-1, n_atoms, 3), "E": (-1,), "F": (-1, n_atoms, 3), "E_kin": (-1,)}
        return {key: np.asarray(values, dtype=np.float64).reshape(shapes[key]) for key, values in self.lists.items()}


@dataclasses.dataclass
class RunState:
    """The dynamical state besides the positions and momenta on the Atoms; with them, what a checkpoint holds."""

    step: int  # MD steps done, Langevin and NVE
    frames: Frames
    rng: np.random.Generator
    relaxed_energy: float  # eV: the minimum the NVE total energy is set from


def save_checkpoint(path: Path, atoms: Atoms, state: RunState, settings: MDSettings) -> None:
    """Write the whole state (float64, bit for bit) and the settings it belongs to."""
    with atomic_output(path) as handle:
        np.savez(
            handle,
            **state.frames.arrays(len(atoms)),
            positions=atoms.get_positions(),
            momenta=atoms.get_momenta(),
            step=state.step,
            rng_state=json.dumps(state.rng.bit_generator.state),
            relaxed_energy=state.relaxed_energy,
            settings=json.dumps(dataclasses.asdict(settings)),
        )


def load_checkpoint(path: Path, atoms: Atoms, settings: MDSettings) -> RunState:
    """Put the checkpointed positions and momenta on `atoms`; returns the rest of the state."""
    try:
        with np.load(path, allow_pickle=False) as data:
            saved = {key: data[key] for key in data.files}
        stored = json.loads(str(saved["settings"]))
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(str(saved["rng_state"]))
        state = RunState(
            step=int(saved["step"]), frames=Frames(saved), rng=rng, relaxed_energy=float(saved["relaxed_energy"])
        )
        positions, momenta = saved["positions"], saved["momenta"]
    except Exception as exc:  # zipfile, numpy, json: a checkpoint of another program or version
        raise DataError(
            f"{path}: not a usable checkpoint of `asteroid simulate` ({type(exc).__name__}: {exc}); "
            "delete it to start over"
        ) from exc
    differing = [
        f"{key}={stored.get(key)!r} there, {value!r} here"
        for key, value in dataclasses.asdict(settings).items()
        if stored.get(key) != value
    ]
    if differing:
        raise ConfigError(
            f"{path}: the checkpoint is of another run ({'; '.join(differing)}); run with its "
            "settings to resume it, or delete it to start over"
        )
    atoms.set_positions(positions)
    atoms.set_momenta(momenta)
    return state
