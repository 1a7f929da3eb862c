"""Writing predicted trajectories: the mirror of readers.py, in the formats VMD, PyMOL, mdtraj and ASE open, each
stating the time between frames where it can hold it."""

from __future__ import annotations

import struct
from contextlib import ExitStack
from pathlib import Path

import ase.io
import mdtraj as md
import numpy as np
from ase import Atoms

from asteroid.data.geometry import covalent_bonds
from asteroid.data.mdtraj_files import AKMA_FS, PDB_TIME_STEP, element_topology
from asteroid.data.starts import InitialConditions
from asteroid.fileio import atomic_output

OUTPUT_FORMATS = {
    ".xyz": "extended XYZ (ASE), Angstrom",
    ".pdb": "multi-model PDB with CONECT bonds (mdtraj)",
    ".dcd": "DCD (mdtraj), with <out>_topology.pdb",
    ".xtc": "XTC (mdtraj), with <out>_topology.pdb",
    ".h5": "MDTraj HDF5, topology included",
    ".npz": "numpy: R (B, F, N, 3) Angstrom, z, history, dt_fs, spacing, start_frame, source",
}
NEEDS_TOPOLOGY_FILE = {".dcd", ".xtc"}  # coordinates only: VMD, PyMOL and mdtraj need a structure beside them


def output_paths(out: Path, batch: int) -> list[Path]:
    """One file per initial condition (out_000.xyz, out_001.xyz, ...) except for .npz, which holds them all."""
    if out.suffix.lower() == ".npz" or batch == 1:
        return [out]
    width = max(3, len(str(batch - 1)))
    return [out.with_name(f"{out.stem}_{i:0{width}d}{out.suffix}") for i in range(batch)]


def molecule_topology(z: np.ndarray, positions: np.ndarray):
    """mdtraj Topology of one residue with the covalent bonds of `positions` (N, 3) Angstrom, so that PDB files get
    CONECT records and viewers draw the bonds the molecule started with, however the rollout moves it."""
    topology = element_topology(z)
    atoms = list(topology.atoms)
    for i, j in covalent_bonds(z, positions).T.tolist():
        topology.add_bond(atoms[i], atoms[j])
    return topology


def write_rollout(out: Path, predicted: np.ndarray, start: InitialConditions, spacing: int) -> list[Path]:
    """Write predicted (B, F, N, 3) Angstrom in the format of `out`'s suffix; returns the paths written. Of a
    memory-mapped `predicted`, one trajectory at a time is in memory.

    All files appear together when every one is complete (none of them if any write fails). A periodic start's
    cell goes into every frame, so viewers and `--init` see the box.
    """
    suffix = out.suffix.lower()
    B, F = predicted.shape[:2]
    times_fs = start.dt_fs * np.arange(1, F + 1)  # (F,) after the last history frame
    cells = [None] * B if start.box is None else np.broadcast_to(start.box, (B, 3, 3))  # Angstrom
    with ExitStack() as files:

        def temporary(path: Path, mode: str = "wb"):
            return files.enter_context(atomic_output(path, mode, suffix=path.suffix))

        if suffix == ".npz":
            periodic = {} if start.box is None else {"box": np.asarray(cells)}
            np.savez(
                temporary(out),
                R=predicted,
                z=start.z,
                history=start.history,
                dt_fs=start.dt_fs,
                spacing=spacing,
                start_frame=start.start_frame,
                source=start.source,
                time_fs=times_fs,
                **periodic,
            )
            return [out]
        paths = output_paths(out, len(predicted))
        if suffix == ".xyz":  # dt_fs in every comment line: `load_trajectory` (and so --init) reads the spacing back
            for path, frames, cell in zip(paths, predicted, cells):
                images = (  # one frame at a time: a long trajectory is not copied into Atoms all at once
                    Atoms(
                        numbers=start.z,
                        positions=frame,
                        info={"time_fs": t, "dt_fs": start.dt_fs},
                        cell=cell,
                        pbc=cell is not None,
                    )
                    for frame, t in zip(frames, times_fs)
                )
                ase.io.write(temporary(path, "w"), images, format="extxyz")
            return paths
        topology = molecule_topology(start.z, start.history[0, -1])
        for path, frames, cell in zip(paths, predicted, cells):
            trajectory = md.Trajectory(frames / 10.0, topology, time=times_fs / 1000.0)  # nm, ps
            if cell is not None:
                trajectory.unitcell_vectors = np.broadcast_to(cell / 10.0, (F, 3, 3))
            save_mdtraj(trajectory, temporary(path).name, start.dt_fs)
        if suffix in NEEDS_TOPOLOGY_FILE:  # the structure the rollout starts from
            paths.append(out.with_name(f"{out.stem}_topology.pdb"))
            save_mdtraj(md.Trajectory(start.history[0, -1:] / 10.0, topology), temporary(paths[-1]).name)
    return paths


def save_mdtraj(trajectory, path: str, dt_fs: float | None = None) -> None:
    """Save in the format of `path`'s suffix, with the time between frames where the format holds it: XTC and HDF5
    store frame times; into PDB goes a REMARK and into a DCD header its time step (mdtraj writes neither), which
    `load_trajectory` (and so `asteroid analyze`) reads back."""
    trajectory.save(path)
    suffix = Path(path).suffix.lower()
    if suffix == ".pdb":
        # mdtraj ends with END after the last ENDMDL, which ASE reads as one more, empty, model; viewers need neither
        lines = Path(path).read_text().splitlines(keepends=True)
        if lines and lines[-1] == "END\n":
            lines = lines[:-1]
        models = iter(range(1, len(lines) + 1))  # mdtraj counts models from 0; the PDB format and viewers from 1
        lines = [f"MODEL     {next(models):4d}\n" if line.startswith("MODEL") else line for line in lines]
        if dt_fs is not None:
            lines.insert(1 if lines and lines[0].startswith("REMARK") else 0, f"{PDB_TIME_STEP} {dt_fs:g}\n")
        Path(path).write_text("".join(lines))
    if suffix == ".dcd" and dt_fs is not None:
        with open(path, "r+b") as fh:  # header: NSAVC 1 (mdtraj's), DELTA the frame spacing in AKMA units
            fh.seek(44)
            fh.write(struct.pack("<f", dt_fs / AKMA_FS))
