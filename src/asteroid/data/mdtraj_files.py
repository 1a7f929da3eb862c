"""mdtraj's formats (DCD, XTC, TRR, AMBER NetCDF, HDF5, multi-model PDB): reading them with a topology and an
atom selection, checking what mdtraj would read from a damaged file without a word, and atom naming."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from asteroid.data.read_common import missing_dt_error, one_line, stated_number, uniform_step_fs
from asteroid.data.trajectory import Trajectory
from asteroid.errors import DataError

MDTRAJ_SUFFIXES = {".dcd", ".xtc", ".trr", ".nc", ".h5", ".pdb"}
SELF_TOPOLOGY_SUFFIXES = {".h5", ".pdb"}
TIMED_SUFFIXES = {".xtc", ".trr", ".nc", ".h5"}  # mdtraj reads real frame times only from these
XDR_SUFFIXES = {".xtc", ".trr"}  # GROMACS formats in XDR: every item a multiple of 4 bytes


@contextlib.contextmanager
def _c_output_silenced():
    """Mute what C code prints to stdout and stderr while inside.

    mdtraj's C readers (xdrfile, dcdplugin) print their complaints about a damaged file themselves; the DataError
    raised from the exception says it in one line.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # C stdio buffers stdout: empty it into /dev/null before switching back
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


@contextlib.contextmanager
def _mdtraj_quietly():
    """mdtraj's warnings about what changes nothing here muted, and its C readers silenced."""
    with warnings.catch_warnings(), _c_output_silenced():
        warnings.filterwarnings("ignore", message=".*netCDF4.*")  # scipy fallback: slower, not wrong
        warnings.filterwarnings("ignore", message="Unlikely unit cell")  # a placeholder PDB cell, which it drops
        yield


def atom_names(z) -> list[str]:
    """Atoms named by element and count, as viewers label them and our files and reports name them: C1, C2, O1, H1."""
    counts: dict[str, int] = {}
    names = []
    for number in z:
        symbol = chemical_symbols[int(number)]
        counts[symbol] = counts.get(symbol, 0) + 1
        names.append(f"{symbol}{counts[symbol]}")
    return names


def element_topology(z: np.ndarray):
    """An mdtraj Topology for bare atomic numbers: one residue, atoms named by `atom_names`."""
    import mdtraj as md

    topology = md.Topology()
    residue = topology.add_residue("MOL", topology.add_chain(), resSeq=1)
    for number, name in zip(z, atom_names(z)):
        topology.add_atom(name, md.element.Element.getByAtomicNumber(int(number)), residue)
    return topology


AKMA_FS = 48.88821  # CHARMM's time unit, in which a DCD header states its time step
PDB_TIME_STEP = "REMARK   1 TIME STEP (FS)"  # how `asteroid rollout` states the spacing in a PDB


def stated_dt_fs(path: Path) -> float | None:
    """The time between frames that a PDB or DCD file states, or None.

    PDB: the REMARK `asteroid rollout` writes. DCD: the header's NSAVC x DELTA (as NAMD and CHARMM write them),
    except DELTA 1.0, which mdtraj writes whatever the time step.
    """
    suffix = path.suffix.lower()
    if suffix == ".pdb":
        with open(path, "rb") as fh:
            for line in fh:
                if line.startswith(PDB_TIME_STEP.encode()):
                    return stated_number(line[len(PDB_TIME_STEP) :].strip().decode(), "the REMARK's time step", path)
                if line.startswith((b"MODEL", b"ATOM", b"HETATM")):
                    return None
    if suffix == ".dcd":
        with open(path, "rb") as fh:
            header = fh.read(48)
        if len(header) == 48 and header[4:8] == b"CORD":
            every = struct.unpack("<i", header[16:20])[0]  # NSAVC: MD steps between saved frames
            delta = struct.unpack("<f", header[44:48])[0]  # DELTA: the MD time step, AKMA units
            if delta != 1.0 and delta > 0 and every > 0:
                return round(every * delta * AKMA_FS, 6)  # float32 DELTA: 5 fs comes back as 4.9999999
    return None


def select_atoms(topology, selection: str, path: Path) -> np.ndarray:
    """Indices of the atoms of `topology` that the mdtraj `selection` picks; DataError if none or invalid."""
    try:
        index = topology.select(selection)
    except Exception as exc:  # mdtraj raises ValueError/KeyError/pyparsing errors for bad selections
        raise DataError(f"{path}: invalid atom selection {selection!r} ({one_line(exc)})") from exc
    if len(index) == 0:
        raise DataError(f"{path}: atom selection {selection!r} matches no atom")
    return index


def _dcd_declared_frames(path: Path) -> int:
    """Frame count (NSET) in a CHARMM/NAMD DCD header; 0 when the header is not the standard one."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    for order in "<>":
        if len(head) == 12:
            marker, magic, n_frames = struct.unpack(order + "i4si", head)
            if marker == 84 and magic == b"CORD":
                return n_frames
    return 0


def _check_layout(path: Path) -> None:
    """DataError for damage mdtraj reads without a word or reports obscurely, where the file shows it.

    XTC and TRR are XDR, a multiple of 4 bytes: mdtraj drops a cut-off last frame when fewer than 4 of its bytes
    remain (a longer remnant makes it fail). A multi-model PDB closes every MODEL with ENDMDL; mdtraj drops a
    MODEL left open. (A DCD header states its frame count: checked after reading.) Not detectable: XTC, TRR or
    PDB cut exactly between two frames, which are valid shorter files. .nc and .h5 state their size, and reading
    a cut one fails.
    """
    suffix = path.suffix.lower()
    size = path.stat().st_size
    if suffix in XDR_SUFFIXES and size % 4:
        raise DataError(
            f"{path}: the file is truncated: {size} bytes is not a whole number of 4-byte XDR words, "
            "so its last frame is cut off"
        )
    if suffix == ".pdb":
        with open(path, "rb") as fh:
            records = [line[:6].rstrip() for line in fh]
        if b"ATOM" not in records and b"HETATM" not in records:
            raise DataError(f"{path}: no ATOM or HETATM records: the file holds no atoms")
        opened, closed = records.count(b"MODEL"), records.count(b"ENDMDL")
        if opened > closed:
            raise DataError(
                f"{path}: the file is truncated: {opened} MODEL records but {closed} ENDMDL, "
                "so its last model is cut off"
            )


def read_mdtraj(
    path: Path, topology: str | Path | None, selection: str | None, dt_fs: float | None, name: str
) -> Trajectory:
    import mdtraj as md

    suffix = path.suffix.lower()
    topology_file = topology if topology is not None else path if suffix in SELF_TOPOLOGY_SUFFIXES else None
    if topology_file is None:
        raise DataError(
            f"{path}: a {suffix} file holds only coordinates; pass a topology file "
            "(--topology, e.g. .pdb, .psf, .gro, .prmtop)"
        )
    if Path(topology_file).is_dir():
        raise DataError(f"{topology_file}: is a directory, not a topology file")
    _check_layout(path)
    try:
        with _mdtraj_quietly():
            top = md.load_topology(str(topology_file))
    except Exception as exc:
        what = "topology" if topology is not None else "file"
        raise DataError(f"{topology_file}: cannot read the {what} ({one_line(exc)})") from exc
    atom_index = None if selection is None else select_atoms(top, selection, path)
    try:
        with _mdtraj_quietly():
            # .h5 carries its own topology and mdtraj warns when given one, even top=None
            given_topology = {} if suffix == ".h5" else {"top": top}
            traj = md.load(str(path), atom_indices=atom_index, **given_topology)
    except Exception as exc:  # mdtraj raises OSError, ValueError, ... on damaged or mismatched files
        raise DataError(f"{path}: cannot read the file with mdtraj ({one_line(exc)})") from exc
    declared = _dcd_declared_frames(path) if suffix == ".dcd" else 0
    if declared > traj.n_frames:  # mdtraj silently drops a cut-off last frame
        raise DataError(
            f"{path}: the file is truncated: its header declares {declared} frames "
            f"but only {traj.n_frames} could be read"
        )
    z = np.array([0 if atom.element is None else atom.element.number for atom in traj.topology.atoms])
    if (z < 1).any():
        names = [str(atom) for atom, number in zip(traj.topology.atoms, z) if number < 1][:5]
        raise DataError(
            f"{topology_file}: no chemical element for atom(s) {', '.join(names)} "
            "(virtual sites?); leave them out with a selection"
        )
    if dt_fs is None and suffix in TIMED_SUFFIXES and traj.n_frames > 1:
        dt_fs = uniform_step_fs(np.asarray(traj.time, dtype=np.float64) * 1000.0, path)  # ps -> fs
    if dt_fs is None:
        dt_fs = stated_dt_fs(path)
    if dt_fs is None:
        raise missing_dt_error(path)
    return Trajectory(
        R=traj.xyz * 10.0,
        z=z,
        dt_fs=dt_fs,
        name=name,
        source=str(path),  # nm -> Angstrom
        box=_mdtraj_box(traj.unitcell_vectors),
    )


def _mdtraj_box(vectors_nm: np.ndarray | None) -> np.ndarray | None:
    """(T, 3, 3) cell in Angstrom, or None when the file has none (mdtraj already drops the 1 Angstrom cube that
    PDB files carry in place of a cell; some DCD writers store zeros)."""
    if vectors_nm is None or not np.any(vectors_nm):
        return None
    return np.asarray(vectors_nm, dtype=np.float64) * 10.0
