"""What a model trained on some data depends on: the window layout, the atoms kept and the trajectories' atoms,
spacing and periodicity. Stored in every checkpoint, and checked when a checkpoint meets data again."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols
from ase.formula import Formula

from asteroid.data.windows import PEER_SEED, PROTOCOLS, WindowLayout
from asteroid.errors import ConfigError, DataError


def formula(z) -> str:
    """Hill formula of atomic numbers, e.g. C2H6O."""
    return Formula.from_list([chemical_symbols[int(number)] for number in z]).format("hill")


@dataclass(frozen=True)
class CachedTrajectory:
    """One trajectory as the data module holds it: atoms, frame spacing, origin, and where its windows start."""

    z: list[int]
    dt_fs: float
    name: str
    source: str
    periodic: bool
    n_frames: int
    starts: dict[str, np.ndarray]  # split -> window start frames
    content: str = ""  # digest of a few of its frames (`content_digest`): tells another run of the same molecule


def content_digest(coordinates: np.ndarray) -> str:
    """SHA-1 of the first, middle and last frames of coordinates (T, N, 3): cheap, and different for any other
    trajectory (another run, another frame step, another stretch of the same run)."""
    picks = [0, len(coordinates) // 2, len(coordinates) - 1]
    return hashlib.sha1(np.ascontiguousarray(coordinates[picks], dtype=np.float32).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class DataSignature:
    """What a model trained on some data depends on: the window layout and the atoms kept; once the data is set up,
    each trajectory's atoms, frame step (fs), periodicity and content digest (enough to roll out from a user's frames
    without the data); and whether the model forecasts molecules it was not trained on. Stored in every checkpoint
    as a dict (`as_dict`, `from_dict`)."""

    history_offsets: tuple[int, ...]
    target_offsets: tuple[int, ...]
    heavy_atoms: bool
    atoms: tuple[tuple[int, ...], ...] = ()  # per trajectory; empty before the data is set up
    dt_fs: tuple[float, ...] = ()
    periodic: tuple[bool, ...] = ()
    content: tuple[str, ...] = ()
    fitted_to_one_molecule: bool = True  # False: no bond table (`ForecastModule.on_save_checkpoint` says)

    @classmethod
    def of(cls, layout: WindowLayout, heavy_atoms: bool, trajectories: list[CachedTrajectory]) -> DataSignature:
        return cls(
            tuple(layout.history_offsets),
            tuple(layout.target_offsets),
            bool(heavy_atoms),
            tuple(tuple(int(n) for n in t.z) for t in trajectories),
            tuple(float(t.dt_fs) for t in trajectories),
            tuple(bool(t.periodic) for t in trajectories),
            tuple(t.content for t in trajectories),
        )

    @classmethod
    def from_dict(cls, recorded: dict | None) -> DataSignature | None:
        """The record a checkpoint stores (None: a checkpoint older than the record)."""
        if not recorded:
            return None
        return cls(
            tuple(recorded["history_offsets"]),
            tuple(recorded["target_offsets"]),
            bool(recorded["heavy_atoms"]),
            tuple(tuple(int(n) for n in z) for z in recorded.get("atoms", [])),
            tuple(float(dt) for dt in recorded.get("dt_fs", [])),
            tuple(bool(p) for p in recorded.get("periodic", [])),
            tuple(recorded.get("content", [])),
            not recorded.get("transferable", False),
        )

    def as_dict(self) -> dict:
        """The checkpoint's record: plain lists, as every reader of older checkpoints knows them."""
        recorded = {
            "history_offsets": list(self.history_offsets),
            "target_offsets": list(self.target_offsets),
            "heavy_atoms": self.heavy_atoms,
        }
        if self.atoms:
            recorded["atoms"] = [list(z) for z in self.atoms]
            recorded["dt_fs"] = list(self.dt_fs)
            recorded["periodic"] = list(self.periodic)
            recorded["content"] = list(self.content)
        return {**recorded, "transferable": not self.fitted_to_one_molecule}

    @property
    def layout(self) -> WindowLayout:
        return WindowLayout(self.history_offsets, self.target_offsets)

    @property
    def transferable(self) -> bool:
        """Whether the model forecasts molecules it was not trained on: trained on several molecules, with nothing
        fitted to one of them (no bond table). The noise head reads only atom types and motion; what it cannot know
        of an unseen molecule (its ranges, its temperature) a rollout takes from the starting history
        (`models.rollout.rollout(..., molecule_from_history=True)`)."""
        return not self.fitted_to_one_molecule and len(set(self.atoms)) > 1

    def unknown_atoms(self, z) -> str | None:
        """Why the model cannot forecast atoms z, or None: a transferable model takes any molecule of the elements it
        was trained on (an element it never saw has an untrained embedding), any other model only its own
        molecules."""
        z = tuple(int(number) for number in z)
        if self.transferable:
            elements = {number for atoms in self.atoms for number in atoms}
            missing = sorted({chemical_symbols[number] for number in z if number not in elements})
            if not missing:
                return None
            trained = ", ".join(chemical_symbols[number] for number in sorted(elements))
            return f"holds {', '.join(missing)}, which the model never saw (it was trained on the elements {trained})"
        if z in self.atoms:
            return None
        trained = ", ".join(sorted({formula(atoms) for atoms in self.atoms}))
        return (
            f"its atoms ({formula(z)}, z = {list(z)}) are not those of any molecule the model was trained on "
            f"({trained})"
        )

    def record_of(self, z) -> tuple[float, bool]:
        """(frame step fs, periodic) of molecule z's trajectories, or (a molecule new to a transferable model) of the
        first: they share the frame step."""
        z = tuple(int(number) for number in z)
        kinds = list(zip(self.atoms, self.dt_fs, self.periodic))
        return next(((dt, periodic) for atoms, dt, periodic in kinds if atoms == z), kinds[0][1:])


def check_signature(
    recorded: DataSignature | None, mine: DataSignature, trajectories: list[CachedTrajectory], checkpoint: str
) -> None:
    """Refuse data (`mine`, its `trajectories`) other than what `checkpoint` was trained on (`recorded`; None for
    checkpoints older than the record, which cannot be checked)."""
    if recorded is None:
        return
    trained = (list(recorded.history_offsets), list(recorded.target_offsets))
    given = (list(mine.history_offsets), list(mine.target_offsets))
    if trained != given:
        raise ConfigError(
            f"{checkpoint}: trained on windows of frames {trained[0]} -> {trained[1]}, but the data "
            f"settings give {given[0]} -> {given[1]}; use the data.spacing, data.history, "
            "data.horizon and data.protocol it was trained with"
        )
    if recorded.heavy_atoms != mine.heavy_atoms:
        kept = "heavy atoms only" if recorded.heavy_atoms else "every atom"
        raise ConfigError(
            f"{checkpoint}: trained on {kept}, but the data settings keep "
            f"{'heavy atoms only' if mine.heavy_atoms else 'every atom'}"
        )
    if recorded.atoms and mine.atoms:
        for trajectory in trajectories:
            problem = recorded.unknown_atoms(trajectory.z)
            if problem is not None:
                raise DataError(f"{trajectory.source}: {problem} ({checkpoint})")
            z = tuple(int(n) for n in trajectory.z)
            trained_dt = {dt for atoms, dt in zip(recorded.atoms, recorded.dt_fs) if atoms == z}
            trained_dt = trained_dt or set(recorded.dt_fs)  # a molecule new to a transferable model
            if trajectory.dt_fs not in trained_dt:
                raise DataError(
                    f"{trajectory.source}: frames {trajectory.dt_fs:g} fs apart, but {checkpoint} was trained on "
                    f"frames {', '.join(f'{dt:g}' for dt in sorted(trained_dt))} fs apart: its windows would span "
                    "other times; give data at the training frame step"
                )
        known = set(recorded.content)
        others = [t.source for t in trajectories if known and t.content and t.content not in known]
        if others and not recorded.transferable:
            print(
                f"note: {', '.join(others)} is not the trajectory {checkpoint} was trained on (same molecule, other "
                "frames): its windows are new to the model",
                file=sys.stderr,
            )


def split_summary(datamodule) -> dict:
    """The split definition of a set-up `TrajectoryDataModule`, saved with every run (splits.json) so that it can be
    reproduced and audited."""
    return {
        "protocol": next(k for k, v in PROTOCOLS.items() if v is datamodule.protocol),
        "description": datamodule.protocol.description,
        "history_offsets": list(datamodule.layout.history_offsets),
        "target_offsets": list(datamodule.layout.target_offsets),
        "stride": datamodule.stride,
        "seed": datamodule.seed,
        "heavy_atoms": datamodule.heavy_atoms,
        "split_seed": PEER_SEED if datamodule.protocol.split == "peer_random" else datamodule.seed,
        "trajectories": [
            {
                "source": t.source,
                "n_frames": t.n_frames,
                "dt_fs": t.dt_fs,
                "periodic": t.periodic,
                **{
                    name: {"windows": len(s), "first_start": int(s[0]), "last_start": int(s[-1])}
                    for name, s in t.starts.items()
                },
            }
            for t in datamodule.trajectories
        ],
        "displacement_scale": datamodule.displacement_scale.tolist(),
    }
