"""What a model trained on some data depends on: the window layout, the atoms kept and the trajectories' atoms,
spacing and periodicity. Stored in every checkpoint, and checked when a checkpoint meets data again."""

from __future__ import annotations

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


def data_signature(layout: WindowLayout, heavy_atoms: bool, trajectories: list[CachedTrajectory]) -> dict:
    """The window layout and atoms kept; once the data is set up, each trajectory's atoms, spacing and periodicity
    (enough to roll out from a user's frames without the data)."""
    signature = {
        "history_offsets": list(layout.history_offsets),
        "target_offsets": list(layout.target_offsets),
        "heavy_atoms": bool(heavy_atoms),
    }
    if trajectories:
        signature["atoms"] = [list(t.z) for t in trajectories]
        signature["dt_fs"] = [t.dt_fs for t in trajectories]
        signature["periodic"] = [bool(t.periodic) for t in trajectories]
    return signature


def check_signature(recorded: dict | None, mine: dict, trajectories: list[CachedTrajectory], checkpoint: str) -> None:
    """Refuse data (`mine`, its `trajectories`) other than what `checkpoint` was trained on (`recorded`; None for
    checkpoints older than the record, which cannot be checked)."""
    if not recorded:
        return
    trained = (recorded["history_offsets"], recorded["target_offsets"])
    given = (mine["history_offsets"], mine["target_offsets"])
    if trained != given:
        raise ConfigError(
            f"{checkpoint}: trained on windows of frames {trained[0]} -> {trained[1]}, but the data "
            f"settings give {given[0]} -> {given[1]}; use the data.spacing, data.history, "
            "data.horizon and data.protocol it was trained with"
        )
    if recorded["heavy_atoms"] != mine["heavy_atoms"]:
        kept = "heavy atoms only" if recorded["heavy_atoms"] else "every atom"
        raise ConfigError(
            f"{checkpoint}: trained on {kept}, but the data settings keep "
            f"{'heavy atoms only' if mine['heavy_atoms'] else 'every atom'}"
        )
    if "atoms" in recorded and "atoms" in mine:
        known = {tuple(z) for z in recorded["atoms"]}
        foreign = [t for t in trajectories if tuple(t.z) not in known]
        if foreign:
            raise DataError(
                f"{foreign[0].source}: its atoms ({formula(foreign[0].z)}) are not those of any "
                f"trajectory {checkpoint} was trained on ({', '.join(formula(z) for z in known)})"
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
