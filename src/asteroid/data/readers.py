"""Read a trajectory file of any supported format into a Trajectory (Angstrom, femtoseconds)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from asteroid.data.time_order import THRESHOLD, TimeOrderWarning, largest_jump, time_order_ratio
from asteroid.data.trajectory import Trajectory
from asteroid.errors import DataError, MissingTimestepError

MD17_DT_FS = 0.5  # sGDML MD17 trajectories store every 0.5 fs step
SGDML_KEYS = {"theory", "md5"}  # metadata only sGDML dataset files carry
RMD17_KEYS = {"coords", "nuclear_charges"}
FORMATS = {
    ".npz": "npz (sGDML MD17/MD22 layout)",
    ".extxyz": "extended XYZ (ASE)",
    ".xyz": "XYZ (ASE)",
    ".traj": "ASE trajectory",
    ".dcd": "DCD (mdtraj)",
    ".xtc": "XTC (mdtraj)",
    ".trr": "TRR (mdtraj)",
    ".nc": "AMBER NetCDF (mdtraj)",
    ".h5": "MDTraj HDF5 (mdtraj)",
    ".pdb": "multi-model PDB (mdtraj)",
}
MDTRAJ_SUFFIXES = {".dcd", ".xtc", ".trr", ".nc", ".h5", ".pdb"}
SELF_TOPOLOGY_SUFFIXES = {".h5", ".pdb"}
TIMED_SUFFIXES = {".xtc", ".trr", ".nc", ".h5"}  # mdtraj reads real frame times only from these
XDR_SUFFIXES = {".xtc", ".trr"}  # GROMACS formats in XDR: every item a multiple of 4 bytes


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0] == "HDF5 error back trace":  # PyTables puts HDF5's C call stack in its message
        causes = [line for line in lines if not line.startswith(('File "', "HDF5 error", "End of HDF5"))]
        lines = causes[-2:-1] or causes  # the innermost cause; the last line only names the file again
    return " ".join(" ".join(lines).split()) or type(exc).__name__


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


def missing_dt_error(path: Path) -> MissingTimestepError:
    return MissingTimestepError(
        f"{path}: the file does not say the time between frames; pass dt_fs (--dt-fs), e.g. 0.5"
    )


def trajectory_format(path: str | Path) -> str:
    """Human-readable name of the format `load_trajectory` reads `path` as."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown trajectory suffix {suffix!r}; supported: {', '.join(FORMATS)}")
    return FORMATS[suffix]


def uniform_step_fs(times_fs: np.ndarray, path: Path) -> float:
    """The constant spacing of frame times (fs); DataError when they do not advance evenly."""
    steps = np.diff(times_fs)
    dt = (times_fs[-1] - times_fs[0]) / len(steps)
    if not dt > 0:
        raise DataError(f"{path}: the frame times in the file do not advance; pass dt_fs (--dt-fs)")
    # xtc stores times as float32: allow its rounding at large absolute times
    tolerance = 1e-3 * dt + 1e-6 * np.abs(times_fs).max()
    if np.abs(steps - dt).max() > tolerance:
        raise DataError(
            f"{path}: frames are not evenly spaced in time (steps from {steps.min():g} to {steps.max():g} fs); "
            "forecasting needs a constant spacing (pass dt_fs to use the frames anyway)"
        )
    return float(dt)


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
                    return _number(line[len(PDB_TIME_STEP) :].strip().decode(), "the REMARK's time step", path)
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
        raise DataError(f"{path}: invalid atom selection {selection!r} ({_one_line(exc)})") from exc
    if len(index) == 0:
        raise DataError(f"{path}: atom selection {selection!r} matches no atom")
    return index


def _read_npz(path: Path, dt_fs: float | None, name: str) -> Trajectory:
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # numpy would try it as a pickle and say so
            raise DataError(f"{path}: not an npz file (an npz is a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            arrays = {key: data[key] for key in ("R", "z", "E", "F", "dt_fs", "box") if key in keys}
    except zipfile.BadZipFile:
        raise DataError(f"{path}: cannot read the npz file: its zip archive is truncated or damaged") from None
    except Exception as exc:  # zlib and numpy raise their own types on a damaged file
        raise DataError(f"{path}: cannot read the npz file ({_one_line(exc)})") from exc
    if RMD17_KEYS <= keys:
        raise DataError(
            f"{path}: this is a revised MD17 (rMD17) file: its frames are random samples, not a time-ordered "
            "trajectory, so it cannot be used for forecasting; use the original MD17 file instead "
            "(sGDML md17_<molecule>.npz, dataset name md17:<molecule>)"
        )
    missing = [key for key in ("R", "z") if key not in keys]
    if missing:
        raise DataError(
            f"{path}: missing key(s) {', '.join(missing)} in the npz file; found keys {sorted(keys)}, expected "
            "R (frames, atoms, 3) Angstrom and z (atoms,), optionally E, F, dt_fs and box"
        )
    if dt_fs is None and "dt_fs" in arrays:
        dt_fs = _number(arrays["dt_fs"], "dt_fs", path)
    if dt_fs is None and SGDML_KEYS & keys:
        dt_fs = MD17_DT_FS
    if dt_fs is None:
        raise missing_dt_error(path)
    E = arrays.get("E")
    return Trajectory(
        R=arrays["R"],
        z=arrays["z"],
        dt_fs=dt_fs,
        name=name,
        source=str(path),
        E=None if E is None else E.reshape(-1),
        F=arrays.get("F"),
        box=arrays.get("box"),
    )


def _number(value, key: str, path: Path) -> float:
    """A number the file states under `key` (e.g. dt_fs), or DataError."""
    try:
        return float(np.asarray(value).item())
    except (TypeError, ValueError):  # text, or an array of several values
        raise DataError(f"{path}: {key} must be one number, got {np.asarray(value).tolist()!r:.60}") from None


def _ase_dt_fs(frames: list, path: Path) -> float | None:
    info = frames[0].info
    if "dt_fs" in info:
        return _number(info["dt_fs"], "dt_fs", path)
    for key in ("time_fs", "time"):  # CP2K writes `time = ...` (fs) in its xyz comment lines
        if len(frames) > 1 and all(key in atoms.info for atoms in frames):
            return uniform_step_fs(np.array([_number(atoms.info[key], key, path) for atoms in frames]), path)
    return None


def _calc_results(frames: list, key: str) -> np.ndarray | None:
    """Per-frame energies or forces when every frame carries them."""
    if all(atoms.calc is not None and key in atoms.calc.results for atoms in frames):
        return np.stack([np.asarray(atoms.calc.results[key]) for atoms in frames])
    return None


def _ase_box(frames: list, path: Path) -> np.ndarray | None:
    """(T, 3, 3) cells of frames periodic in all three directions, None for open ones (ASE's pbc flags)."""
    pbc = np.array([atoms.pbc for atoms in frames])  # (T, 3)
    if not pbc.any():
        return None
    if not pbc.all():
        raise DataError(
            f"{path}: periodic in only some directions (pbc {pbc[np.argmin(pbc.all(axis=1))].tolist()});"
            " only fully periodic cells or open boundaries are supported"
        )
    return np.stack([atoms.cell.array for atoms in frames])


def _read_ase(path: Path, dt_fs: float | None, name: str) -> Trajectory:
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as exc:  # ASE raises ValueError, IndexError, ... on malformed or cut files
        raise DataError(f"{path}: cannot read the file with ASE ({_one_line(exc)})") from exc
    if not frames:
        raise DataError(f"{path}: the trajectory has no frames")
    z = frames[0].numbers
    for t, atoms in enumerate(frames):
        if len(atoms) != len(z) or not np.array_equal(atoms.numbers, z):
            raise DataError(
                f"{path}: the atoms change at frame {t} ({len(z)} atoms in frame 0, {len(atoms)} "
                f"in frame {t}); a trajectory needs the same atoms in every frame"
            )
    if dt_fs is None:
        dt_fs = _ase_dt_fs(frames, path)
    if dt_fs is None:
        raise missing_dt_error(path)
    R = np.stack([atoms.positions for atoms in frames])  # (T, N, 3) Angstrom
    return Trajectory(
        R=R,
        z=z,
        dt_fs=dt_fs,
        name=name,
        source=str(path),
        E=_calc_results(frames, "energy"),
        F=_calc_results(frames, "forces"),
        box=_ase_box(frames, path),
    )


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


def _read_mdtraj(
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
        raise DataError(f"{topology_file}: cannot read the {what} ({_one_line(exc)})") from exc
    atom_index = None if selection is None else select_atoms(top, selection, path)
    try:
        with _mdtraj_quietly():
            # .h5 carries its own topology and mdtraj warns when given one, even top=None
            given_topology = {} if suffix == ".h5" else {"top": top}
            traj = md.load(str(path), atom_indices=atom_index, **given_topology)
    except Exception as exc:  # mdtraj raises OSError, ValueError, ... on damaged or mismatched files
        raise DataError(f"{path}: cannot read the file with mdtraj ({_one_line(exc)})") from exc
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


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a trajectory file")
    trajectory_format(path)  # unknown suffix -> DataError
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    return path


def warn_if_shuffled(traj: Trajectory) -> None:
    """Warn (TimeOrderWarning) when the frames of `traj` look shuffled rather than time-ordered, or jump."""
    ratio = time_order_ratio(traj.R)
    if ratio >= THRESHOLD:  # False for nan: too short to tell
        warnings.warn(
            TimeOrderWarning(
                f"{traj.source}: frames look shuffled, not time-ordered (consecutive frames are {ratio:.2f} times "
                "as far apart as random frames); forecasting needs consecutive MD frames"
            ),
            stacklevel=3,
        )
        return
    jump = largest_jump(traj.R)
    if jump is not None:
        warnings.warn(
            TimeOrderWarning(
                f"{traj.source}: atom {jump['atom']} jumps {jump['distance']:.3g} A between frames {jump['frame']} and "
                f"{jump['frame'] + 1} (the fastest atom's typical step is {jump['typical']:.3g} A): the frames are not "
                "one continuous trajectory there"
            ),
            stacklevel=3,
        )


def load_trajectory(
    path: str | Path,
    *,
    topology: str | Path | None = None,
    selection: str | None = None,
    dt_fs: float | None = None,
    name: str | None = None,
    check_order: bool = True,
) -> Trajectory:
    """Read a trajectory file, choosing the reader by suffix.

    .npz (MD17/MD22 sGDML layout or our generator), .extxyz/.xyz/.traj (ASE), .dcd/.xtc/.trr/.nc/.h5
    and multi-model .pdb (mdtraj, with `topology` unless the file carries its own). A periodic cell in the
    file becomes `Trajectory.box`, and the coordinates come back unwrapped (continuous in time). `selection` is an
    mdtraj selection (e.g. "not element H"); for .npz and ASE files it is evaluated on a topology of
    one residue whose atoms are named by their element symbol, so element, name, index and mass
    selections work there. `dt_fs`, when given, overrides the frame spacing the file states.
    Raises DataError naming the file and the problem; warns TimeOrderWarning on shuffled frames.
    """
    path = _checked_path(path)
    name = path.stem if name is None else name
    if path.suffix.lower() in MDTRAJ_SUFFIXES:
        traj = _read_mdtraj(path, topology, selection, dt_fs, name)
    else:
        if topology is not None:
            raise DataError(
                f"{path}: a topology is only used with mdtraj formats "
                f"({', '.join(sorted(MDTRAJ_SUFFIXES))}); this file names its atoms itself"
            )
        read = _read_npz if path.suffix.lower() == ".npz" else _read_ase
        traj = read(path, dt_fs, name)
        if selection is not None:
            traj = traj.select_atoms(select_atoms(element_topology(traj.z), selection, path))
    traj = traj.unwrapped()
    if check_order:
        warn_if_shuffled(traj)
    return traj
