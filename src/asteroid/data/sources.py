"""Where the data module's trajectories come from: a file, a known dataset, or GFN2-xTB MD made on the spot."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from asteroid.data.mdanalysis import PROTEIN_DATASETS, protein_files


@dataclass
class TrajectorySource:
    """One trajectory file, and how to make it if it is missing.

    path: the trajectory (any format `asteroid.data.load_trajectory` reads), or a known dataset name such as
        "md17:ethanol" or "mdanalysis:adk_tmd" (a protein, with its topology and frame spacing), downloaded into
        data/ when missing.
    molecule: a built-in molecule (e.g. "ethanol"), or structure: a starting-structure file (xyz, pdb: anything ASE
        reads) of any other; when `path` is missing, GFN2-xTB MD at 500 K generates it there from either.
    frames: frames to generate. topology / selection / dt_fs: passed to the reader.
    periodic: use the file's periodic cell when it has one (neighbours then reach periodic images); false treats
        the system as open whatever the file says.
    """

    path: str
    molecule: str | None = None
    structure: str | None = None
    frames: int = 20000
    topology: str | None = None
    selection: str | None = None
    dt_fs: float | None = None
    periodic: bool = True


def with_dataset_topology(source: TrajectorySource) -> TrajectorySource:
    """A source naming a protein dataset, with the dataset's topology file and frame spacing where it gives none."""
    dataset = PROTEIN_DATASETS.get(source.path.lower())
    if dataset is None:
        return source
    topology = source.topology or str(protein_files(dataset.name, root="data")[1])
    return dataclasses.replace(source, topology=topology, dt_fs=source.dt_fs or dataset.dt_fs)


def generated(source: TrajectorySource) -> bool:
    """Whether GFN2-xTB MD makes the source's trajectory when its file is missing (it names a molecule or structure)."""
    return source.molecule is not None or source.structure is not None


def generate(source: TrajectorySource, progress: bool = True) -> dict:
    """Make the trajectory of a `generated` source at its path (GFN2-xTB MD at 500 K; an interrupted run resumes from
    its checkpoint, else starts afresh): `simulate`'s report. What `asteroid fit` and `asteroid simulate --config`
    make alike."""
    from asteroid.simulation.md import simulate  # here: tblite loads only when data must be made

    Path(source.path).parent.mkdir(parents=True, exist_ok=True)
    return simulate(
        source.path,
        molecule=source.molecule,
        structure=source.structure,
        frames=source.frames,
        resume=True,
        progress=progress,
    )
